"""AdapterHub's compositions and AdapterFusion (docs/adapterhub_compositions.md), measured against AdapterHub.

tests/fixtures/adapterhub_compose/ was made by AdapterHub 1.3 itself (scripts/adapterhub_compose_fixtures.py):
per architecture, its saved adapters, fusions, and for each case — a composition activated, or an
`average_adapter` — its logits and the gradients of one loss. Here each case is rebuilt in peftlab on
transformers 5 from AdapterHub's files (no AdapterHub installed) and gives those logits within 1e-5 and
those gradients within 1e-4. The rows H20-H24 of docs/fidelity.md have their tests here (`test_H2*`). Bad
inputs are one line and leave the model as it was."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peftlab as pl
from peftlab.core import adapter_state
from tiny import tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "adapterhub_compose"
BASES = Path(__file__).parent / "fixtures" / "adapterhub" / "base"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [(arch, case) for arch, cases in sorted(MANIFEST["cases"].items()) for case in sorted(cases)]


def base_model(arch: str):
    """tests/tiny.py's model with AdapterHub's base weights; T5 with the eager attention transformers 4.57 gave
    it (SDPA's rounding differs by ~1e-6, which the gradients of deep compositions amplify)."""
    model = tiny_model(arch)
    model.load_state_dict(load_file(str(BASES / f"{arch}.safetensors")), strict=False)
    if arch == "t5":
        model.set_attn_implementation("eager")
    return model


def batch_of(arch: str) -> dict:
    return load_file(str(FIXTURES / arch / "batch.safetensors"))


def build(arch: str, case: str):
    """The case in peftlab: AdapterHub's saved adapters (and fusion) loaded, its composition activated."""
    spec = MANIFEST["cases"][arch][case]
    model = base_model(arch)
    for name in spec["members"]:
        pl.load(model, FIXTURES / arch / name, activate=False)
    if "fusion" in spec:
        pl.load(model, FIXTURES / arch / case)
    if "average" in spec:
        pl.adapterhub.average_adapter(model, "avg", set_active=True, **spec["average"])
    else:
        pl.activate(model, pl.adapterhub.block_from_setup(spec["setup"], model))
    return model


def adapterhub_parameters(model) -> dict:
    """AdapterHub's tensor name -> the peftlab parameter holding it, for every attached adapter and fusion."""
    out = {}
    for name, config in pl.adapters(model).items():
        names = (pl.adapterhub.fusion_tensor_names(model, name) if config.method == "fusion"
                 else pl.adapterhub.tensor_names(model, name))
        state = adapter_state(model, name)
        out.update({ah: state[key] for ah, key in names.items()})
    return out


def prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def test_the_fixtures_were_made_on_the_stored_bases():
    for arch, digest in MANIFEST["bases"].items():
        assert hashlib.sha256((BASES / f"{arch}.safetensors").read_bytes()).hexdigest() == digest, \
            f"{arch}: tests/fixtures/adapterhub/base changed; regenerate with `make test-peers`"


@pytest.mark.parametrize("arch,case", CASES)
def test_adapterhubs_composition_gives_its_logits_and_gradients(arch, case):
    model = build(arch, case)
    expected = load_file(str(FIXTURES / arch / f"{case}.safetensors"))
    params = adapterhub_parameters(model)
    grads = prefixed(expected, "grad::")
    for key in grads:
        params[key].requires_grad_(True)      # AdapterHub differentiated the members too
    logits = model(**batch_of(arch)).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
    if grads:
        probe = torch.sin(0.7 * torch.arange(logits.numel(), dtype=torch.float32)).reshape(logits.shape)
        (logits.float() * probe).sum().backward()      # the generator's loss
        # within 1e-4, and within 1e-4 of the case's largest gradient where that is below 1 (BERT's are ~1e-3)
        tolerance = 1e-4 * min(1.0, max(g.abs().max().item() for g in grads.values()))
        for key, grad in grads.items():
            torch.testing.assert_close(params[key].grad.reshape(grad.shape), grad, rtol=0, atol=tolerance, msg=key)
    averaged = prefixed(expected, "avg::")
    if averaged and MANIFEST["cases"][arch][case]["average"].get("combine_strategy") != "lora_delta_w_svd":
        for key, tensor in averaged.items():   # SVD factors are unique only up to signs: logits suffice there
            torch.testing.assert_close(params[key].detach().reshape(tensor.shape), tensor, rtol=0, atol=1e-6)
    if "fusion_regularization_loss" in expected:
        pl.train_adapter(model, next(n for n, c in pl.adapters(model).items() if c.method == "fusion"))
        loss = pl.adapterhub.fusion_regularization_loss(model)
        torch.testing.assert_close(loss.reshape(1), expected["fusion_regularization_loss"], rtol=1e-6, atol=1e-6)


def test_the_worked_example_in_docs_adapterhub_compositions_md_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parent.parent / "docs" / "adapterhub_compositions.md").read_text()
    code = text.split("## Worked example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"tests/fixtures/', f'"{FIXTURES.parent}/')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/adapterhub_compositions.md", "exec"), {})
    assert (tmp_path / "out" / "a1,a2,a3" / "pytorch_model_adapter_fusion.bin").is_file()


def test_every_refused_pair_names_adapterhubs_error_and_has_no_fixture():
    for arch, refused in MANIFEST["refused"].items():
        for case, reason in refused.items():
            assert reason and not (FIXTURES / arch / f"{case}.safetensors").exists()
    assert MANIFEST["refused"]["bert"]["lora_split"] == "NotImplementedError"
    assert "Cannot use Stack" in MANIFEST["refused"]["gpt2"]["lora_stack"]


# --- exports: AdapterHub's names and values, read back ----------------------------------------------------

@pytest.mark.parametrize("arch,case", [("bert", "bn_fuse"), ("t5", "bn_fuse_options"), ("gpt2", "bn_fuse_static")])
def test_an_exported_fusion_has_adapterhubs_files_and_reads_back(arch, case, tmp_path):
    model = build(arch, case)
    batch = batch_of(arch)
    with torch.no_grad():
        expected = model(**batch).logits
    fusion = next(n for n, c in pl.adapters(model).items() if c.method == "fusion")
    pl.export_adapterhub(model, fusion, tmp_path / "fusion")
    source = FIXTURES / arch / case
    saved = (load_file(str(source / "model_adapter_fusion.safetensors")) if
             (source / "model_adapter_fusion.safetensors").exists() else
             torch.load(source / "pytorch_model_adapter_fusion.bin", weights_only=True))
    written = torch.load(tmp_path / "fusion" / "pytorch_model_adapter_fusion.bin", weights_only=True)
    assert sorted(written) == sorted(saved) and all(torch.equal(written[k], saved[k]) for k in saved)
    meta, ours = (json.loads((d / "adapter_fusion_config.json").read_text()) for d in (source, tmp_path / "fusion"))
    assert ours["config"] == meta["config"] | {"dropout_prob": meta["config"]["dropout_prob"] or None}
    assert (ours["name"], ours["adapter_names"]) == (meta["name"], meta["adapter_names"])
    fresh = base_model(arch)
    for name in MANIFEST["cases"][arch][case]["members"]:
        pl.load(fresh, FIXTURES / arch / name, activate=False)
    pl.load(fresh, tmp_path / "fusion")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected, rtol=0, atol=0)


def test_a_setup_round_trips_through_adapterhubs_dict_form():
    for block in (pl.Stack("a", "b", compat="adapterhub"), pl.ParallelBlock("a", "b"),
                  pl.BatchSplit("a", "b", sizes=[1, 2]), pl.Split("a", "b", splits=[2, 3]),
                  pl.AverageOutputs("a", "b", weights=[1, 3], compat="adapterhub"),
                  pl.Stack("a", pl.Split("b", "c", splits=2), compat="adapterhub")):
        assert pl.adapterhub.block_from_setup(pl.adapterhub.setup_to_dict(block)) == block
    fuse = pl.adapterhub.block_from_setup({"type": "Fuse", "children": [{"type": "single", "children": ["a"]},
                                                                       {"type": "single", "children": ["b"]}]})
    assert fuse == pl.Fuse("a", "b", compat="adapterhub")


# --- the blocks themselves ---------------------------------------------------------------------------------

def _two_loras(arch="bert"):
    model = base_model(arch)
    for seed, name in enumerate(("a", "b")):
        pl.attach(model, pl.LoRA(r=2), name, activate=False)
        with torch.no_grad():
            torch.manual_seed(seed)
            for p in pl.core.attachment_parameters(model, name):
                p.normal_(0, 0.3)
    return model


def _logits(model, block, batch):
    pl.activate(model, block)
    with torch.no_grad():
        return model(**batch).logits


def test_split_runs_each_adapter_on_its_positions():
    """Position by position the same as the adapter alone, wherever nothing mixes positions (a FFN-only
    LoRA on a model without attention would be exact; here: the first layer's FFN outputs)."""
    model = _two_loras("gpt2")
    batch = batch_of("gpt2")
    split = _logits(model, pl.Split("a", "b", splits=[1, 3]), batch)
    alone_a, alone_b = _logits(model, "a", batch), _logits(model, "b", batch)
    torch.testing.assert_close(split[:, :1], alone_a[:, :1])   # causal: position 0 sees only itself
    assert not torch.allclose(split[:, 1:], alone_a[:, 1:]) and not torch.allclose(split[:, 1:], alone_b[:, 1:])


def test_H20_adapterhubs_fusion_mixes_up_projections_with_a_value_map_without_bias():
    """docs/fidelity.md H20: the compat fusion has no value bias and reads the members' up-projections; over
    the same adapters, peftlab's own fusion (V(y_i) with a bias, from the identity) computes something else."""
    model = build("bert", "bn_fuse")
    fusion = next(n for n, c in pl.adapters(model).items() if c.method == "fusion")
    keys = pl.adapterhub.fusion_tensor_names(model, fusion)
    assert not any(k.endswith("value.bias") for k in keys) and any(k.endswith("value.weight") for k in keys)
    batch = batch_of("bert")
    expected = load_file(str(FIXTURES / "bert" / "bn_fuse.safetensors"))["logits"]
    pl.attach(model, pl.Fuse("a1", "a2", "a3", name="own"))
    own = _logits(model, pl.Fuse("a1", "a2", "a3", name="own"), batch)
    assert (own - expected).abs().max() > 1e-3
    torch.testing.assert_close(_logits(model, fusion, batch), expected, rtol=0, atol=1e-5)


def test_H21_the_regularization_loss_is_adapterhubs_on_every_trained_value_map():
    model = build("bert", "bn_fuse")
    fusion = next(n for n, c in pl.adapters(model).items() if c.method == "fusion")
    assert pl.adapterhub.fusion_regularization_loss(model) is None      # loaded frozen: nothing trains
    pl.train_adapter(model, fusion)
    values = [p for k, p in adapter_state(model, fusion).items() if k.endswith("value.weight")]
    by_hand = sum(0.01 * (torch.eye(16) - v).pow(2).sum() for v in values)
    torch.testing.assert_close(pl.adapterhub.fusion_regularization_loss(model), by_hand)


def test_H22_average_outputs_is_the_weighted_mean_and_adapterhubs_divides_by_n():
    model = _two_loras()
    batch = batch_of("bert")
    pl.deactivate(model)
    with torch.no_grad():
        base = model(**batch).logits
    mean = _logits(model, pl.AverageOutputs("a", "a"), batch)
    torch.testing.assert_close(mean, _logits(model, "a", batch))
    halved = _logits(model, pl.AverageOutputs("a", "a", compat="adapterhub"), batch)
    pl.attach(model, pl.LoRA(r=2), "a_halved", activate=False)   # LoRA: h + (1/n) Σ w_i ΔW_i x = h + ΔW_a x / 2
    with torch.no_grad():
        for key, tensor in adapter_state(model, "a_halved").items():
            tensor.copy_(adapter_state(model, "a")[key] * (0.5 if "lora_B" in key else 1.0))
    torch.testing.assert_close(halved, _logits(model, "a_halved", batch))
    assert not torch.allclose(halved, base)


def test_H23_average_normalizes_weights_and_offers_adapterhubs_strategies():
    model = _two_loras()
    assert pl.Average("a", "b", weights=[1, 3], normalize_weights=True).weights == (0.25, 0.75)
    pl.average(model, ["a", "b"], [1, 3], "lin", combine="linear", normalize_weights=True)
    state, a, b = (adapter_state(model, n) for n in ("lin", "a", "b"))
    lora = [k for k in state if k.startswith("parts.")]     # the task head is shared, not averaged
    assert lora and all(torch.allclose(state[k], 0.25 * a[k] + 0.75 * b[k]) for k in lora)
    pl.average(model, ["a", "b"], [1.0, -0.5], "neg", combine="linear_negate_b")
    neg = adapter_state(model, "neg")
    assert all(torch.allclose(neg[k], a[k] + (0.5 if "lora_A" in k else -0.5) * b[k]) for k in lora)
    pl.average(model, ["a", "b"], [1, 3], "svd", combine="svd", svd_rank=4)   # rank 4 holds both updates
    svd = adapter_state(model, "svd")
    for key in (k for k in lora if k.endswith("lora_A.weight")):
        b_key = key.replace("lora_A", "lora_B")
        exact = a[b_key] @ a[key] + 3 * b[b_key] @ b[key]    # pl.LoRA(r=2) has alpha 8: scale 4 each, 1 after
        torch.testing.assert_close(svd[b_key] @ svd[key], 4 * exact, rtol=1e-4, atol=1e-4)


def test_H24_adapterhubs_stack_feeds_one_loras_update_into_the_next():
    model = _two_loras()
    batch = batch_of("bert")
    chained = _logits(model, pl.Stack("a", "b", compat="adapterhub"), batch)
    assert not torch.allclose(chained, _logits(model, pl.Stack("a", "b"), batch))   # AdapterHub's: the fixtures
    llama = build("llama", "lora_batchsplit")      # l1, l2 on q and v: v is 16 -> 8 (grouped keys and values)
    pl.activate(llama, pl.Stack("l1", "l2", compat="adapterhub"))
    with pytest.raises(pl.PeftlabError, match="feeds one LoRA's update .8 features. into the next, which reads 16"):
        llama(**batch_of("llama"))


BAD_BLOCKS = [
    (lambda: pl.Split("a", "b", splits=[1]), "must be 2 positive ints"),
    (lambda: pl.Split("a", "b", splits=[0, 2]), "must be 2 positive ints"),
    (lambda: pl.AverageOutputs("a", "b", weights=[1]), "must be 2 finite numbers"),
    (lambda: pl.AverageOutputs("a", "b", weights=[1, -1]), "sum to 0"),
    (lambda: pl.AverageOutputs("a", "b", compat="peft"), "is not None or 'adapterhub'"),
    (lambda: pl.Fuse("a", "b", query_before_ln=True), "set compat='adapterhub'"),
    (lambda: pl.Fuse("a", "b", compat="adapterhub", query=False, key=False, value=False), "without query, key"),
    (lambda: pl.Fuse("a", "b", quary=True), "did you mean 'query'"),
    (lambda: pl.Average("a", "b", weights=[1, -1], normalize_weights=True), "sum to 0"),
    (lambda: pl.adapterhub.block_from_setup({"type": "MultiTask", "children": []}), "adapter_names"),
]


@pytest.mark.parametrize("make,message", BAD_BLOCKS)
def test_a_bad_block_is_one_line(make, message):
    with pytest.raises(pl.PeftlabError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_split_that_does_not_fit_the_sequence_is_one_line_and_changes_nothing():
    model = _two_loras()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pl.activate(model, pl.Split("a", "b", splits=[1, 2]))
    with pytest.raises(pl.PeftlabError, match=r"sum to 3, but .* sees a sequence of 4 positions"):
        model(**batch_of("bert"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("call,message", [
    (lambda m: pl.average(m, ["a", "b"], [1, 1], "x", combine="svd"), "takes a positive svd_rank"),
    (lambda m: pl.average(m, ["a", "b"], [1, 1], "x", combine="svd", svd_rank=99), "exceeds a layer's update"),
    (lambda m: pl.average(m, ["a", "b"], [1, 1], "x", combine="mean"), "is not one of"),
    (lambda m: pl.adapterhub.average_adapter(m, "x", ["a", "b"], combine_strategy="ties"), "is not one of"),
])
def test_a_bad_average_is_one_line_and_adds_nothing(call, message):
    model = _two_loras()
    with pytest.raises(pl.PeftlabError, match=message):
        call(model)
    assert set(pl.adapters(model)) == {"a", "b"}


# --- bad fusion directories: one line, the model unchanged --------------------------------------------------

def _fusion_copy(tmp_path: Path, change=None, damage=None) -> Path:
    target = tmp_path / "fusion"
    shutil.copytree(FIXTURES / "bert" / "bn_fuse", target)
    if change is not None:
        meta = json.loads((target / "adapter_fusion_config.json").read_text())
        change(meta)
        (target / "adapter_fusion_config.json").write_text(json.dumps(meta))
    if damage is not None:
        tensors = torch.load(target / "pytorch_model_adapter_fusion.bin", weights_only=True)
        damage(tensors)
        torch.save(tensors, target / "pytorch_model_adapter_fusion.bin")
    return target


@pytest.mark.parametrize("change,damage,message", [
    (lambda m: m["config"].update(temperature=True), None, "config.temperature=true anneals"),
    (lambda m: m["config"].update(fancy=1), None, "config key 'fancy'"),
    (lambda m: m.update(adapter_names=["a1", "zz"]), None, "'zz' is not attached"),
    (lambda m: m.update(model_type="roberta"), None, "model_type"),
    (None, lambda t: t.pop(sorted(t)[0]), "is missing"),
    (None, lambda t: t.update({sorted(t)[0]: torch.zeros(2, 2)}), "has shape"),
    (None, lambda t: t.update({"bert.encoder.layer.0.output.adapter_fusion_layer.a1,a2,a3.gate": torch.zeros(1)}),
     "is unexpected"),
])
def test_a_bad_fusion_directory_is_one_line_and_changes_nothing(change, damage, message, tmp_path):
    directory = _fusion_copy(tmp_path, change, damage)
    model = base_model("bert")
    for name in ("a1", "a2", "a3"):
        pl.load(model, FIXTURES / "bert" / name, activate=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match=message) as err:
        pl.load(model, directory)
    assert "\n" not in str(err.value)
    assert set(pl.adapters(model)) == {"a1", "a2", "a3"}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_fusion_file_that_would_run_code_is_refused(tmp_path):
    directory = _fusion_copy(tmp_path)
    marker = tmp_path / "ran"

    class Code:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    torch.save({"x": Code()}, directory / "pytorch_model_adapter_fusion.bin")
    model = base_model("bert")
    for name in ("a1", "a2", "a3"):
        pl.load(model, FIXTURES / "bert" / name, activate=False)
    with pytest.raises(pl.PeftlabError):
        pl.load(model, directory)
    assert not marker.exists()


def test_peftlabs_own_fusion_and_a_lora_fusion_are_refused_by_the_exporter_and_the_builder(tmp_path):
    model = _two_loras()
    with pytest.raises(pl.PeftlabError, match="fuses AdapterHub's sequential bottleneck adapters"):
        pl.attach(model, pl.Fuse("a", "b", compat="adapterhub"))
    assert set(pl.adapters(model)) == {"a", "b"}
    bn = base_model("bert")
    pl.attach(bn, pl.Pfeiffer(), "p", activate=False)
    pl.attach(bn, pl.Pfeiffer(), "q", activate=False)
    pl.attach(bn, pl.Fuse("p", "q"))
    with pytest.raises(pl.PeftlabError, match="peftlab's own fusion"):
        pl.export_adapterhub(bn, "fuse_p_q", tmp_path / "x")
