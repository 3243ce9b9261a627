"""AdapterHub interchange (docs/adapterhub.md). The fixtures in tests/fixtures/adapterhub/ are AdapterHub's own
files: scripts/adapterhub_fixtures.py built tiny models with adapters 1.3 on transformers 4.57, added each
method with random non-zero weights, saved it with `save_adapter` and recorded AdapterHub's logits. Here,
on transformers 5 and with no AdapterHub installed, each loads with `pl.load` and gives those logits;
exports read back; bad inputs are one line and leave the model as it was."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peftlab as pl
from peftlab.adapterhub import tensor_names
from peftlab.adapterhub_format import is_adapterhub
from peftlab.core import adapter_state
from tiny import no_dropout, tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "adapterhub"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name != "base")
ARCHS = sorted({case.split("-")[0] for case in CASES})


def base_model(arch: str):
    """The fixture's base: tests/tiny.py's model with the weights AdapterHub's side saved."""
    model = tiny_model(arch)
    model.load_state_dict(load_file(str(FIXTURES / "base" / f"{arch}.safetensors")), strict=False)
    return model


def fixed_batch(arch: str) -> tuple[dict, torch.Tensor]:
    tensors = load_file(str(FIXTURES / "base" / f"{arch}-batch.safetensors"))
    return tensors, tensors.pop("logits")


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before: dict) -> None:
    assert not hasattr(model, "peftlab_adapters") or not pl.adapters(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_the_base_models_agree_across_transformers_versions(arch):
    """The fixtures mean something only if transformers 5 rebuilds AdapterHub's base exactly."""
    batch, expected = fixed_batch(arch)
    torch.testing.assert_close(logits(base_model(arch), batch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_adapterhubs_saved_adapter_gives_adapterhubs_logits(case):
    arch = case.split("-")[0]
    model = base_model(arch)
    batch, _ = fixed_batch(arch)
    pl.load(model, FIXTURES / case)
    expected = load_file(str(FIXTURES / case / "expected.safetensors"))["logits"]
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["bert-seq_bn", "roberta-seq_bn_options", "gpt2-lora_options", "t5-par_bn_options",
                                  "bart-seq_bn_post_add", "llama-ia3_options", "bert-prompt_tuning_bos",
                                  "bart-compacter_pp", "t5-compacter_options", "llama-compacter",
                                  "gpt2-double_seq_bn_inv", "t5-seq_bn_inv", "t5-prefix_tuning",
                                  "bert-prefix_tuning_flat", "bart-prefix_tuning_options", "llama-prefix_tuning"])
def test_an_export_has_adapterhubs_tensor_names_and_reads_back(case, tmp_path):
    arch = case.split("-")[0]
    model = base_model(arch)
    batch, _ = fixed_batch(arch)
    pl.load(model, FIXTURES / case)
    expected = logits(model, batch)
    pl.export_adapterhub(model, None, tmp_path / "out")
    saved = _weights(FIXTURES / case)
    written = load_file(str(tmp_path / "out" / "adapter.safetensors"))
    assert sorted(written) == sorted(saved)
    assert all(torch.equal(written[k], saved[k]) for k in saved)
    assert set(torch.load(tmp_path / "out" / "pytorch_adapter.bin", weights_only=True)) == set(saved)
    fresh = base_model(arch)
    pl.load(fresh, tmp_path / "out")
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=0)


def _weights(directory: Path) -> dict:
    if (directory / "adapter.safetensors").exists():
        return load_file(str(directory / "adapter.safetensors"))
    return torch.load(directory / "pytorch_adapter.bin", weights_only=True)


def test_a_trained_task_head_comes_with_the_adapter_and_leaves_with_it():
    model = base_model("bert")
    before = snapshot(model)
    head = torch.load(FIXTURES / "bert-seq_bn" / "pytorch_model_head.bin", weights_only=True)
    assert not torch.equal(head["classifier.weight"], before["classifier.weight"])
    pl.load(model, FIXTURES / "bert-seq_bn")
    assert torch.equal(model.classifier.weight, head["classifier.weight"])
    pl.detach(model, "seq_bn")
    assert_unchanged(model, before)


def test_adapterhub_and_hf_peft_configs_are_told_apart_by_content(tmp_path):
    assert is_adapterhub(json.loads((FIXTURES / "bert-lora" / "adapter_config.json").read_text()))
    model = base_model("bert")
    pl.attach(model, pl.LoRA(r=2), "p")
    pl.export_peft(model, "p", tmp_path / "peft")
    assert not is_adapterhub(json.loads((tmp_path / "peft" / "adapter_config.json").read_text()))
    fresh = base_model("bert")
    pl.load(fresh, tmp_path / "peft")
    assert isinstance(pl.adapters(fresh)["default"], pl.LoRA)


# --- bad inputs: one line, the model unchanged -------------------------------------------------------------

def _copy(case: str, tmp_path: Path) -> Path:
    target = tmp_path / case
    shutil.copytree(FIXTURES / case, target)
    return target


def _edit_config(directory: Path, change) -> None:
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


REFUSED = [
    ("bert-seq_bn", lambda m: m["config"].update(fancy_key=1), "config key 'fancy_key'"),
    ("bert-seq_bn", lambda m: m["config"].update(phm_layer=True), "adapter_down.0.weight' is unexpected"),
    ("bert-seq_bn", lambda m: m["config"].update(inv_adapter="nice"), "needs a positive inv_adapter_reduction"),
    ("bert-seq_bn", lambda m: m["config"].update(inv_adapter="realnvp"), "inv_adapter must be 'nice', 'glow' or None"),
    ("bert-compacter", lambda m: m["config"].update(factorized_phm_W=False, shared_W_phm=True),
     "AdapterHub fails to build it"),
    ("bert-seq_bn", lambda m: m["config"].update(original_ln_after=False), "config.original_ln_after=False"),
    ("bert-seq_bn", lambda m: m["config"].update(reduction_factor={"default": 4}), "reduction_factor"),
    ("bert-seq_bn", lambda m: m["config"].update(init_weights="houlsby"), "init_weights='houlsby'"),
    ("bert-seq_bn", lambda m: m["config"].update(scaling="channel"), "scaling='channel'"),
    ("bert-seq_bn", lambda m: m["config"].pop("mh_adapter"), "lacks 'mh_adapter'"),
    ("bert-seq_bn", lambda m: m.update(model_type="roberta"), "model_type"),
    ("bert-seq_bn", lambda m: m.update(config="pfeiffer"), "names an AdapterHub preset"),
    ("bert-lora", lambda m: m["config"].update(use_dora=True), "config.use_dora=True"),
    ("bert-lora", lambda m: m["config"].update(architecture="reft"), "architecture='reft'"),
    ("bert-prefix_tuning", lambda m: m["config"].update(use_gating=True), "config.use_gating=True"),
    ("bert-lora", lambda m: m["config"].update(attn_matrices=["q", "x"]), "attn_matrices"),
    ("bert-ia3", lambda m: m["config"].update(r=2), "r must be 1"),
]


@pytest.mark.parametrize("case,change,message", REFUSED)
def test_an_unsupported_config_is_refused_in_one_line_naming_the_key(case, change, message, tmp_path):
    directory = _copy(case, tmp_path)
    _edit_config(directory, change)
    model = base_model("bert")
    before = snapshot(model)
    with pytest.raises(pl.PeftlabError, match=message) as err:
        pl.load(model, directory)
    assert "\n" not in str(err.value)
    assert_unchanged(model, before)


def _drop_first_tensor(directory: Path) -> None:
    tensors = torch.load(directory / "pytorch_adapter.bin", weights_only=True)
    tensors.pop(sorted(tensors)[0])
    torch.save(tensors, directory / "pytorch_adapter.bin")


def _reshape_tensor(directory: Path) -> None:
    tensors = torch.load(directory / "pytorch_adapter.bin", weights_only=True)
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(3, 3)
    torch.save(tensors, directory / "pytorch_adapter.bin")


def _extra_tensor(directory: Path) -> None:
    tensors = torch.load(directory / "pytorch_adapter.bin", weights_only=True)
    tensors["bert.encoder.layer.0.output.adapters.seq_bn.gate.weight"] = torch.zeros(1, 16)
    torch.save(tensors, directory / "pytorch_adapter.bin")


class _Code:
    """Unpickling this runs a shell command: what `weights_only=True` exists to refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "pytorch_adapter.bin").unlink(), "no pytorch_adapter.bin or adapter.safetensors"),
    (_drop_first_tensor, "is missing"),
    (_reshape_tensor, "has shape"),
    (_extra_tensor, "is unexpected"),
    (lambda d: torch.save({"w": _Code(d / "ran")}, d / "pytorch_adapter.bin"), "refused: not a file of tensors"),
    (lambda d: (d / "pytorch_adapter.bin").write_bytes(b"not a pickle"), "refused: not a file of tensors"),
    (lambda d: torch.save({"w": torch.full((2,), float("nan"))}, d / "pytorch_adapter.bin"), "NaN"),
])
def test_damaged_weights_are_refused_in_one_line(damage, message, tmp_path):
    directory = _copy("bert-seq_bn", tmp_path)
    damage(directory)
    model = base_model("bert")
    before = snapshot(model)
    with pytest.raises(pl.PeftlabError, match=message) as err:
        pl.load(model, directory)
    assert "\n" not in str(err.value)
    assert not (directory / "ran").exists()
    assert_unchanged(model, before)


def test_a_flexible_head_is_refused_unless_strict_is_off(tmp_path):
    directory = _copy("bert-lora", tmp_path)
    head = json.loads((directory / "head_config.json").read_text())
    head["config"] = {"head_type": "classification", "num_labels": 3, "layers": 2}
    (directory / "head_config.json").write_text(json.dumps(head))
    model = base_model("bert")
    with pytest.raises(pl.PeftlabError, match="flexible heads"):
        pl.load(model, directory)
    with pytest.warns(UserWarning, match="flexible heads"):
        pl.load(model, directory, strict=False)
    assert "lora" in pl.adapters(model)


def test_a_lora_saved_before_adapters_1_1_gets_alpha_equal_r_as_adapterhubs_loader_does(tmp_path):
    directory = _copy("bert-lora", tmp_path)
    _edit_config(directory, lambda m: m.update(version="adapters.1.0.1"))
    model = base_model("bert")
    with pytest.warns(UserWarning, match="alpha is set to r"):
        pl.load(model, directory)
    config = pl.adapters(model)["lora"]
    assert config.alpha == config.r == 4


def test_export_refuses_an_adapter_adapterhub_computes_differently(tmp_path):
    model = base_model("bert")
    pl.attach(model, pl.Pfeiffer(), "mine")
    with pytest.raises(pl.PeftlabError, match="export_adapterhub writes adapters built with AdapterHub's"):
        pl.export_adapterhub(model, "mine", tmp_path / "out")
    pl.attach(model, pl.SeqBn(unfreeze_layer_norms=True), "norms")
    with pytest.raises(pl.PeftlabError, match="layer norms"):
        pl.export_adapterhub(model, "norms", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_presets_refuse_another_code_bases_conventions():
    for preset in (pl.SeqBn, pl.DoubleSeqBn, pl.ParBn, pl.SeqBnInv, pl.DoubleSeqBnInv, pl.adapterhub.Compacter,
                   pl.adapterhub.CompacterPlusPlus, pl.adapterhub.LoRA, pl.adapterhub.IA3, pl.adapterhub.PromptTuning,
                   pl.adapterhub.PrefixTuning):
        with pytest.raises(pl.PeftlabError, match="compat must be 'adapterhub'"):
            preset(compat=None)
    with pytest.raises(pl.PeftlabError, match="original_ln_before=True is AdapterHub's option"):
        pl.Bottleneck(original_ln_before=True)
    with pytest.raises(pl.PeftlabError, match="inv_adapter='nice' is AdapterHub's option"):
        pl.Pfeiffer(inv_adapter="nice", inv_adapter_reduction_factor=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pl.Bottleneck(original_ln_before=True, compat="adapterhub")


def test_a_t5_compacter_with_shared_tensors_is_refused_both_ways(tmp_path):
    """AdapterHub never saves (or loads) a Compacter's shared tensors on T5: its own file of one lacks them,
    and an export would lose them."""
    directory = _copy("t5-compacter_options", tmp_path)
    tensors = torch.load(directory / "pytorch_adapter.bin", weights_only=True)
    torch.save({k: v for k, v in tensors.items() if ".phm_rule" not in k}, directory / "pytorch_adapter.bin")
    _edit_config(directory, lambda m: m["config"].update(shared_phm_rule=True))
    model = base_model("t5")
    before = snapshot(model)
    with pytest.raises(pl.PeftlabError, match="shared_parameters.compacter_options.phm_rule_left' is missing "
                                              r"\(AdapterHub keeps a Compacter's shared tensors only under a base"):
        pl.load(model, directory)
    assert_unchanged(model, before)
    pl.attach(model, pl.adapterhub.Compacter(reduction_factor=4), "c")
    with pytest.raises(pl.PeftlabError, match="neither saves nor loads on this model"):
        pl.export_adapterhub(model, "c", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    pl.attach(model, pl.adapterhub.Compacter(reduction_factor=4, shared_phm_rule=False), "d")
    pl.export_adapterhub(model, "d", tmp_path / "out")


def test_the_worked_example_in_docs_adapterhub_md_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parent.parent / "docs" / "adapterhub.md").read_text()
    code = text.split("## Worked example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('fixtures = "tests/fixtures/adapterhub"', f'fixtures = "{FIXTURES}"')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/adapterhub.md", "exec"), {})
    assert (tmp_path / "out" / "seq_bn" / "pytorch_adapter.bin").is_file()


# --- training: AdapterHub's gradients ------------------------------------------------------------------------

GRADIENT_CASES = [case for case in CASES if (FIXTURES / case / "grads.safetensors").exists()]


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_adapterhubs_saved_adapter_gets_adapterhubs_gradients(case):
    """d sum(logits * probe) / d each adapter tensor, in train mode, against AdapterHub's own (mapped through
    the name table pl.load reads by): within 1e-4 of the largest gradient of the fixture."""
    arch = case.split("-")[0]
    model = base_model(arch)
    batch, _ = fixed_batch(arch)
    pl.load(model, FIXTURES / case, trainable=True)
    name = next(iter(pl.adapters(model)))
    no_dropout(model)
    state, names = adapter_state(model, name), tensor_names(model, name)
    want = load_file(str(FIXTURES / case / "grads.safetensors"))
    tensors = [state[names[key]] for key in want]
    model.train()
    out = model(**batch).logits
    weights = load_file(str(FIXTURES / "base" / f"{arch}-probe.safetensors"))["probe"]
    got = torch.autograd.grad((out * weights).sum(), tensors, allow_unused=True)
    scale = max(g.abs().max().item() for g in want.values())
    for (key, expected), grad, tensor in zip(want.items(), got, tensors):
        grad = torch.zeros_like(tensor) if grad is None else grad
        gap = (grad.reshape(expected.shape) - expected).abs().max().item()
        assert gap <= 1e-4 * scale, f"{key}: gradient off by {gap:.2e} (largest gradient {scale:.2e})"
