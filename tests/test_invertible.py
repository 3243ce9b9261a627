"""Invertible adapter (NICE coupling) and the MAD-X flow: Stack("lang", "task"), then swap the language."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.core import attachment_parameters
from peftlab.runtime import get_module
from peftlab.methods.invertible import CouplingForward, CouplingInverse, NiceCoupling
from tiny import tiny_batch, tiny_model


@torch.no_grad()
def _perturb(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    for p in attachment_parameters(model, name):
        p.add_(0.5 * torch.randn(p.shape, generator=g))


def _parts(model, name, kind):
    return [p for _, p in pl.core.require(model).adapters[name].parts if isinstance(p, kind)]


@pytest.mark.parametrize("d", [16, 17])   # odd widths split unevenly
def test_coupling_forward_then_inverse_is_the_identity(d):
    torch.manual_seed(0)
    coupling = NiceCoupling(d, reduction_factor=2, non_linearity="relu", init="near_identity")
    with torch.no_grad():
        for p in coupling.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(3, 5, d)
    y = coupling(x)
    assert (y - x).abs().max() > 0.1
    torch.testing.assert_close(coupling.inverse(y), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(coupling(coupling.inverse(x)), x, rtol=0, atol=1e-5)


def test_the_model_applies_the_forward_on_embeddings_and_the_inverse_before_the_tied_head():
    model = tiny_model("gpt2")
    batch = {k: v for k, v in tiny_batch("gpt2").items() if k != "labels"}
    pl.attach(model, pl.InvertibleAdapter(), "lang")
    _perturb(model, "lang", seed=1)
    (forward,), (inverse,) = _parts(model, "lang", CouplingForward), _parts(model, "lang", CouplingInverse)
    assert inverse.__dict__["shared"] is forward.coupling
    seen = {}
    model.transformer.wte.base_layer.register_forward_hook(lambda m, i, out: seen.__setitem__("emb", out))
    model.lm_head.base_layer.register_forward_pre_hook(lambda m, args: seen.__setitem__("head_in", args[0]))
    model.transformer.ln_f.register_forward_hook(lambda m, i, out: seen.__setitem__("final", out))
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    emb = forward.coupling(seen["emb"])
    position = model.transformer.wpe(torch.arange(batch["input_ids"].shape[1]))
    torch.testing.assert_close(out.hidden_states[0], emb + position, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["head_in"], forward.coupling.inverse(seen["final"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(forward.coupling(seen["head_in"]), seen["final"], rtol=0, atol=1e-5)


def _madx(arch):
    model = tiny_model(arch)
    for i, lang in enumerate(("lang_en", "lang_de")):
        pl.attach(model, pl.InvertibleAdapter(adapter=pl.Pfeiffer(reduction_factor=2)), lang)
        _perturb(model, lang, seed=10 + i)
    pl.attach(model, pl.Pfeiffer(reduction_factor=2), "task")
    _perturb(model, "task", seed=20)
    return model


def _run(model, batch):
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out.logits, out.hidden_states


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_madx_swapping_the_language_adapter_changes_only_what_it_should(arch, tmp_path):
    model = _madx(arch)
    batch = {k: v for k, v in tiny_batch(arch).items() if k != "labels"}
    task_before = [p.clone() for p in attachment_parameters(model, "task")]
    pl.activate(model, pl.Stack("lang_en", "task"))
    logits_en, hidden_en = _run(model, batch)
    pl.activate(model, pl.Stack("lang_de", "task"))
    logits_de, hidden_de = _run(model, batch)
    assert not torch.allclose(logits_en, logits_de, atol=1e-4)
    # The embeddings are the language adapter's alone: the task adapter does not touch them.
    pl.activate(model, "lang_de")
    _, hidden_lang_only = _run(model, batch)
    torch.testing.assert_close(hidden_de[0], hidden_lang_only[0], rtol=0, atol=0)
    assert not torch.allclose(hidden_en[0], hidden_de[0], atol=1e-4)
    # The task adapter is untouched by the swap, and the result does not depend on lang_en being there.
    assert all(torch.equal(a, b) for a, b in zip(task_before, attachment_parameters(model, "task")))
    pl.save(model, tmp_path / "de", "lang_de"), pl.save(model, tmp_path / "task", "task")
    fresh = tiny_model(arch)
    pl.load(fresh, tmp_path / "de", "lang_de"), pl.load(fresh, tmp_path / "task", "task")
    pl.activate(fresh, pl.Stack("lang_de", "task"))
    torch.testing.assert_close(_run(fresh, batch)[0], logits_de, rtol=0, atol=0)


def test_madx_stack_equals_the_language_then_task_reference():
    model = _madx("bert")
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    pl.activate(model, pl.Stack("lang_en", "task"))
    stacked = _run(model, batch)[1][-1]
    # Reference: hooks on the plain base modules applying lang_en's parts, then task's.
    reference = tiny_model("bert")
    controller = pl.core.require(model)
    for name in ("lang_en", "task"):
        for path, part in controller.adapters[name].parts:
            module = get_module(reference, path)
            module.register_forward_hook(lambda m, i, out, part=part: part(out))
    torch.testing.assert_close(_run(reference, batch)[1][-1], stacked, rtol=0, atol=1e-5)


def test_mixed_batch_rows_can_use_different_language_adapters():
    model = _madx("gpt2")
    batch = {k: v for k, v in tiny_batch("gpt2", batch=3).items() if k != "labels"}
    single = {}
    for lang in ("lang_en", "lang_de"):
        pl.activate(model, lang)
        single[lang] = _run(model, batch)[0]
    mixed = _run_routed(model, batch, ["lang_de", "lang_en", "lang_de"])
    for row, lang in enumerate(["lang_de", "lang_en", "lang_de"]):
        torch.testing.assert_close(mixed[row], single[lang][row], rtol=0, atol=1e-5)


def _run_routed(model, batch, names):
    with torch.no_grad():
        return model(**batch, adapter_names=names).logits
