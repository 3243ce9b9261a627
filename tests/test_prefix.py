"""Prefix tuning: HF PEFT parity (flat), generate() with the KV cache, eject, counts, save/load."""
from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

import peftlab as pl
from peftlab.io import WEIGHTS_FILE
from test_prompt import PEFT_TASK, generate_vs_manual
from tiny import tiny_batch, tiny_model

peft = pytest.importorskip("peft")


def _prefix(model, name="a"):
    return model.peftlab_adapters[name].prefix


def _peft_prefix_model(arch, length):
    config = peft.PrefixTuningConfig(task_type=PEFT_TASK[arch], num_virtual_tokens=length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(tiny_model(arch), config).eval()


def _t5_layers_as_peft_uses_them(weight: torch.Tensor, n_layers: int) -> torch.Tensor:
    """PEFT feeds T5's decoder layer l from its stored layer (2l mod L): it concatenates the prefix twice
    (self- and cross-attention caches), splits per layer, then empties the cross-attention cache. To
    compare, our layer l gets PEFT's stored layer 2l mod L."""
    per_layer = weight.view(weight.shape[0], n_layers, -1)
    return torch.stack([per_layer[:, (2 * layer) % n_layers] for layer in range(n_layers)], 1).flatten(1)


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama"])
def test_flat_prefix_gives_the_same_logits_as_hf_peft(arch):
    """Same prefix tensor -> same logits. PEFT prefixes T5's decoder only, so we do too here."""
    model, batch = tiny_model(arch), tiny_batch(arch)
    stacks = ("decoder",)
    pl.attach(model, pl.PrefixTuning(prefix_length=3, flat=True, stacks=stacks), "a")
    ref = _peft_prefix_model(arch, 3)
    theirs = ref.prompt_encoder["default"].embedding.weight.detach()
    ours = _t5_layers_as_peft_uses_them(theirs, 2) if arch == "t5" else theirs
    with torch.no_grad():
        _prefix(model).embedding.copy_(ours)
        torch.testing.assert_close(model(**batch).logits, ref(**batch).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(**batch).loss, ref(**batch).loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_generate_with_cache_equals_manual_loop_without_cache(arch):
    model = tiny_model(arch)
    pl.attach(model, pl.PrefixTuning(prefix_length=3, mlp_hidden=8), "a")
    generated, manual, gen_logits, manual_logits = generate_vs_manual(model, arch)
    assert torch.equal(generated, manual)
    torch.testing.assert_close(gen_logits, manual_logits, rtol=0, atol=1e-5)
    pl.deactivate(model)
    assert (generate_vs_manual(model, arch)[2] - gen_logits).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ["t5", "gpt2", "bert"])
def test_eject_keeps_outputs_and_drops_the_mlp_from_the_saved_file(arch, tmp_path):
    model, batch = tiny_model(arch), tiny_batch(arch)
    pl.attach(model, pl.PrefixTuning(prefix_length=4, mlp_hidden=16), "a")
    with torch.no_grad():
        before = model(**batch).logits
    pl.save(model, tmp_path / "mlp")
    pl.eject_prefix(model, "a")
    assert pl.adapters(model)["a"].flat and not hasattr(_prefix(model), "mlp")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=1e-6)
    pl.save(model, tmp_path / "flat")
    keys = set(load_file(tmp_path / "flat" / WEIGHTS_FILE))
    assert not any("mlp" in k for k in keys) and "home.prefix.embedding" in keys
    assert any("mlp" in k for k in load_file(tmp_path / "mlp" / WEIGHTS_FILE))
    assert (tmp_path / "flat" / WEIGHTS_FILE).stat().st_size < (tmp_path / "mlp" / WEIGHTS_FILE).stat().st_size
    fresh = tiny_model(arch)
    pl.load(fresh, tmp_path / "flat")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, before, rtol=0, atol=1e-6)


def test_reparameterized_prefix_parameter_count():
    """Embedding(m, d) + Linear(d, h) + Linear(h, L*2*d): GPT-2 tiny, d = 16, L = 2, m = 5, h = 8."""
    model = tiny_model("gpt2")
    pl.attach(model, pl.PrefixTuning(prefix_length=5, mlp_hidden=8), "a")
    assert pl.trainable_parameters(model)[0] == 5 * 16 + (16 * 8 + 8) + (8 * 64 + 64)


def test_llama_prefix_has_the_width_of_its_grouped_keys():
    model = tiny_model("llama")   # 4 query heads, 2 key/value heads of size 4
    pl.attach(model, pl.PrefixTuning(prefix_length=3, flat=True), "a")
    assert _prefix(model).embedding.shape == (3, 2 * 2 * 2 * 4)


def test_t5_prefix_in_every_stack_and_position_bias_for_the_prefix_columns():
    """Encoder and decoder both prefixed; moving only the encoder's prefix changes the output."""
    model, batch = tiny_model("t5"), tiny_batch("t5")
    pl.attach(model, pl.PrefixTuning(prefix_length=2, flat=True), "a")
    prefix = _prefix(model).embedding
    assert prefix.shape == (2, 4 * 2 * 16)      # 2 encoder + 2 decoder layers
    with torch.no_grad():
        before = model(**batch).logits
        prefix[:, :2 * 2 * 16] += 1.0             # encoder layers come first
        assert (model(**batch).logits - before).abs().max() > 1e-4


def test_bad_prefix_configs_raise():
    with pytest.raises(pl.PeftlabError, match="prefix_length must be >= 1"):
        pl.PrefixTuning(prefix_length=0)
    model = tiny_model("gpt2")
    with pytest.raises(pl.PeftlabError, match="stacks"):
        pl.attach(model, pl.PrefixTuning(stacks=("encoder",)), "a")
    assert not hasattr(model, "_peftlab")
    pl.attach(model, pl.LoRA(), "lora")
    with pytest.raises(pl.PeftlabError, match="needs a PrefixTuning adapter"):
        pl.eject_prefix(model, "lora")
