"""Bad input gets a clear one-line error that names what was wrong, and changes nothing."""
from __future__ import annotations

import json
import os

import pytest

from peftlab.files import content_digest, sha256_of
from safetensors.torch import load_file, save_file
import torch

import peftlab as pl
from peftlab import PeftlabError
from peftlab.cli import main
from tiny import tiny_batch, tiny_model


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [n for n, _ in model.named_modules()]


def _assert_unchanged(model, snapshot):
    state, modules = snapshot
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert [n for n, _ in model.named_modules()] == modules


def test_unknown_config_key_names_it_and_the_closest():
    with pytest.raises(PeftlabError, match=r"unknown key 'reduction_factr' \(did you mean 'reduction_factor'\?\)"):
        pl.config_from_dict({"method": "houlsby", "reduction_factr": 16})
    for build in (lambda: pl.Houlsby(reduction_factr=16), lambda: pl.Compacter(reduction_factr=3)):
        with pytest.raises(PeftlabError, match=r"unknown key 'reduction_factr' \(did you mean 'reduction_factor'\?\)"):
            build()
    with pytest.raises(PeftlabError, match=r"LoRA takes its fields by name, e.g. LoRA\(r=\.\.\.\)"):
        pl.LoRA(8)
    from peftlab.train.schema import TrainSection
    with pytest.raises(PeftlabError, match=r"TrainSection: unknown key 'learnig_rate' \(did you mean 'learning_rate'"):
        TrainSection(learnig_rate=1e-3)


def test_wrong_type_names_field_and_value():
    with pytest.raises(PeftlabError, match=r"LoRA.r: expected int, got 'eight'"):
        pl.LoRA(r="eight")
    with pytest.raises(PeftlabError, match=r"non_linearity: 'sigmoid' is not one of"):
        pl.Bottleneck(non_linearity="sigmoid")


def test_unknown_method_suggests():
    with pytest.raises(PeftlabError, match=r"unknown method 'houlsbi' \(did you mean 'houlsby'\?\)"):
        pl.config_from_dict({"method": "houlsbi"})


@pytest.mark.parametrize("arch", ["t5", "bert", "gpt2"])
def test_zero_size_bottleneck_is_refused_and_model_unchanged(arch):
    model = tiny_model(arch)
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match=r"reduction_factor 64.0 gives a zero-size bottleneck for hidden size 16"):
        pl.attach(model, pl.Houlsby(reduction_factor=64))
    _assert_unchanged(model, before)
    assert not hasattr(model, "_peftlab")


def test_slot_the_architecture_lacks_lists_available():
    model = tiny_model("bert")
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match=r"slot 'cross_attn.q' .* available: attn, attn.k"):
        pl.attach(model, pl.LoRA(slots=("attn.q", "cross_attn.q")))
    _assert_unchanged(model, before)


def test_unknown_slot_suggests():
    with pytest.raises(PeftlabError, match=r"slot 'attn.qq' does not exist in the llama layout \(did you mean"):
        pl.attach(tiny_model("llama"), pl.LoRA(slots=("attn.qq",)))


def test_pattern_matching_nothing_is_an_error_and_model_unchanged():
    model = tiny_model("t5")
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match=r"pattern 'query' matched no module"):
        pl.attach(model, pl.LoRA(target_modules=("q", "query")))
    _assert_unchanged(model, before)


def test_second_adapter_under_existing_name_is_refused():
    model = pl.attach(tiny_model("gpt2"), pl.LoRA(), name="task")
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match=r"an adapter named 'task' is already attached"):
        pl.attach(model, pl.IA3(), name="task")
    _assert_unchanged(model, before)
    assert list(pl.adapters(model)) == ["task"]


def test_failed_second_attach_leaves_the_first_intact():
    model = pl.attach(tiny_model("t5"), pl.LoRA(), name="one")
    before = _snapshot(model)
    with pytest.raises(PeftlabError):
        pl.attach(model, pl.Houlsby(reduction_factor=100), name="two")
    _assert_unchanged(model, before)
    assert list(pl.adapters(model)) == ["one"]


def test_loading_into_a_different_base_names_the_difference(tmp_path):
    model = pl.attach(tiny_model("t5"), pl.LoRA())
    pl.save(model, tmp_path)
    other = tiny_model("bert")
    before = _snapshot(other)
    with pytest.raises(PeftlabError, match=r"saved on a 't5' model, this one is 'bert'"):
        pl.load(other, tmp_path)
    _assert_unchanged(other, before)


def test_loading_into_a_differently_shaped_base_names_the_parameter(tmp_path):
    import transformers as tf
    from tiny import tiny_config
    model = pl.attach(tiny_model("gpt2"), pl.LoRA())
    pl.save(model, tmp_path)
    config = tiny_config("gpt2")
    config.n_inner = 48
    other = tf.GPT2LMHeadModel(config)
    with pytest.raises(PeftlabError, match=r"base parameter 'transformer.h.0.mlp.c_fc.weight' has shape \[16, 48\] here"):
        pl.load(other, tmp_path)


def test_truncated_weights_file_names_the_file_and_changes_nothing(tmp_path):
    model = pl.attach(tiny_model("llama"), pl.LoRA())
    pl.save(model, tmp_path)
    weights = tmp_path / "peftlab_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    fresh = tiny_model("llama")
    before = _snapshot(fresh)
    with pytest.raises(PeftlabError, match=r"peftlab_weights.safetensors: the weights file changed since it "
                                           r"was saved"):
        pl.load(fresh, tmp_path)
    _assert_unchanged(fresh, before)


def test_tampered_tensor_shape_is_refused_and_model_unchanged(tmp_path):
    from safetensors.torch import load_file, save_file
    model = pl.attach(tiny_model("llama"), pl.LoRA())
    pl.save(model, tmp_path)
    weights = tmp_path / "peftlab_weights.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, weights)
    meta = json.loads((tmp_path / "peftlab_config.json").read_text())
    del meta["sha256"]              # a hand-made file: no digest to catch it, the shape check does
    (tmp_path / "peftlab_config.json").write_text(json.dumps(meta))
    fresh = tiny_model("llama")
    before = _snapshot(fresh)
    with pytest.raises(PeftlabError, match=r"has shape \[3, 3\], expected"):
        pl.load(fresh, tmp_path)
    _assert_unchanged(fresh, before)


def test_corrupt_config_json_names_the_file(tmp_path):
    model = pl.attach(tiny_model("llama"), pl.LoRA())
    pl.save(model, tmp_path)
    (tmp_path / "peftlab_config.json").write_text("{not json")
    with pytest.raises(PeftlabError, match=r"peftlab_config.json: not valid JSON"):
        pl.load(tiny_model("llama"), tmp_path)


def test_newer_config_with_unknown_keys_loads_with_a_warning(tmp_path):
    model = pl.attach(tiny_model("llama"), pl.LoRA())
    pl.save(model, tmp_path)
    meta = json.loads((tmp_path / "peftlab_config.json").read_text())
    meta["config"]["a_future_option"] = 3
    weights = tmp_path / "peftlab_weights.safetensors"      # as a newer peftlab would write both files
    save_file(load_file(weights), weights, metadata={"format": "pt", "peftlab_config_sha256": content_digest(meta["config"])})
    meta["sha256"] = {weights.name: sha256_of(weights)}
    (tmp_path / "peftlab_config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="a_future_option"):
        pl.load(tiny_model("llama"), tmp_path)


def test_merge_refuses_non_finite_weights():
    model = pl.attach(tiny_model("gpt2"), pl.LoRA(), name="a")
    part = next(p for _, p in model._peftlab.adapters["a"].parts)
    with torch.no_grad():
        part.lora_B.weight.fill_(float("inf"))
        part.lora_A.weight.fill_(1.0)
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match="non-finite"):
        pl.merge(model, "a")
    _assert_unchanged(model, before)


def test_merge_of_an_unmergeable_method_is_refused():
    model = pl.attach(tiny_model("t5"), pl.Houlsby(reduction_factor=4), name="a")
    with pytest.raises(PeftlabError, match=r"'a' \(houlsby\) cannot be merged"):
        pl.merge(model, "a")


def test_activating_an_unknown_adapter_names_it():
    model = pl.attach(tiny_model("t5"), pl.LoRA(), name="rte")
    with pytest.raises(PeftlabError, match=r"no adapter named 'rtee' \(did you mean 'rte'\?\)"):
        pl.activate(model, "rtee")


def test_unsupported_architecture_is_named():
    import transformers as tf
    config = tf.DistilBertConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    with pytest.raises(PeftlabError, match=r"slot 'attn.q': model type 'distilbert' has no peftlab layout; place "
                                           r"the method by module name \(target_modules\), e.g. among: .*q_lin"):
        pl.attach(tf.DistilBertModel(config), pl.LoRA())


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "houlsby", "reduction_factr": 16}))
    assert main(["params", "--model", "t5-small", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "reduction_factr" in err and "Traceback" not in err


def test_model_still_trains_after_a_failed_attach():
    model = tiny_model("gpt2")
    with pytest.raises(PeftlabError):
        pl.attach(model, pl.LoRA(target_modules=("nothing_here",)))
    model.train()
    model(**tiny_batch("gpt2")).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _saved(tmp_path, name="a"):
    model = pl.attach(tiny_model("llama"), pl.LoRA(), name=name)
    with torch.no_grad():                  # each adapter its own trained-looking weights
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) + ord(name))       # a and b differ whatever the RNG state
    return pl.save(model, tmp_path / name)


@pytest.mark.parametrize("tamper, message", [
    ("flip", "the weights file changed since it was saved"),
    ("swap", "the weights file changed since it was saved"),
    ("config", "the config was edited after the weights were saved"),
    ("symlink", "a symbolic link out of"),
    ("nan", "holds NaN or infinite values"),
    ("int", "has dtype torch.int64, expected a floating-point type"),
    ("fifo", "not a regular file"),
])
def test_tampered_adapters_are_refused_naming_the_file(tmp_path, tamper, message):
    directory, other = _saved(tmp_path, "a"), _saved(tmp_path, "b")
    weights, config = directory / "peftlab_weights.safetensors", directory / "peftlab_config.json"
    if tamper == "flip":
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x01
        weights.write_bytes(bytes(data))
    elif tamper == "swap":
        weights.write_bytes((other / weights.name).read_bytes())
    elif tamper == "config":
        meta = json.loads(config.read_text())
        meta["config"]["alpha"] = meta["config"].get("alpha", 8) * 2
        config.write_text(json.dumps(meta))
    elif tamper == "symlink":
        weights.unlink()
        weights.symlink_to(other / weights.name)
    elif tamper in ("nan", "int"):
        tensors = load_file(weights)
        key = sorted(tensors)[0]
        tensors[key] = torch.full_like(tensors[key], float("nan")) if tamper == "nan" else tensors[key].long()
        save_file(tensors, weights)
        meta = json.loads(config.read_text())
        meta.pop("sha256")          # a re-made file without a digest: the content checks catch it
        config.write_text(json.dumps(meta))
    elif tamper == "fifo":
        weights.unlink()
        os.mkfifo(weights)
    fresh = tiny_model("llama")
    before = _snapshot(fresh)
    with pytest.raises(PeftlabError, match=message) as err:
        pl.load(fresh, directory)
    assert "\n" not in str(err.value)
    _assert_unchanged(fresh, before)


@pytest.mark.parametrize("config, message", [
    (lambda: pl.Houlsby(scaling=0), "scaling 0 switches the adapter off"),
    (lambda: pl.LoRA(alpha=0), "LoRA.alpha 0 scales the update to nothing"),
    (lambda: pl.PHMAdapter(phm_init_range=1e12), r"phm_init_range must be in \(0, 1\]"),
    (lambda: pl.Houlsby(drop_max_layers=5000), "must be in 0..1000"),
    (lambda: pl.SPoT(sources=("a",), seed=-1), r"SPoT.seed must be >= 0, got -1"),
])
def test_nonsense_method_values_are_refused_in_one_line(config, message):
    with pytest.raises(PeftlabError, match=message):
        config()


def test_adapterdrop_deeper_than_the_model_is_refused_and_the_model_unchanged():
    model = tiny_model("bert")
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match="AdapterDrop drops 100 layers but the model has 2"):
        pl.attach(model, pl.Houlsby(reduction_factor=4, drop_max_layers=100))
    _assert_unchanged(model, before)


@pytest.mark.parametrize("config", [None, "lora", {"method": "lora"}, 5, pl.LoRA],
                         ids=["none", "str", "dict", "int", "class"])
def test_attaching_something_that_is_no_config_is_one_line_and_changes_nothing(config):
    model = tiny_model("t5")
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match="expected a method config such as pl.LoRA") as err:
        pl.attach(model, config)
    assert "\n" not in str(err.value)
    _assert_unchanged(model, before)


def test_saving_into_a_path_that_is_a_file_is_one_line_and_keeps_the_file(tmp_path):
    model = pl.attach(tiny_model("t5"), pl.LoRA())
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's file")
    with pytest.raises(PeftlabError, match="notes.txt: exists and is not a folder"):
        pl.save(model, mine)
    assert mine.read_text() == "the user's file"


def test_a_save_over_an_adapter_that_fails_midway_keeps_the_previous_adapter_whole(tmp_path, monkeypatch):
    import errno
    from pathlib import Path
    first = _saved(tmp_path, "a")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    second = pl.attach(tiny_model("llama"), pl.LoRA(), name="a")
    write_text = Path.write_text

    def full_disk(self, *args, **kwargs):     # the weights fit; the config after them does not
        if "peftlab_config.json" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(PeftlabError, match=r"peftlab_config.json: cannot write it \(No space left on device\)"):
        pl.save(second, first)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before       # no temporary left either
    pl.load(tiny_model("llama"), first)


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [float("inf"), 0.0], ["x", 1.0], [True, 1.0]])
def test_average_weights_must_be_finite_numbers(weights):
    with pytest.raises(PeftlabError, match=r"Average weights .* must be finite numbers"):
        pl.Average("a", "b", weights=weights)


def test_a_misspelt_ia3_feedforward_slot_is_refused_and_the_model_unchanged():
    model = tiny_model("gpt2")
    before = _snapshot(model)
    with pytest.raises(PeftlabError, match=r"slot 'ffn.outt' does not exist in the gpt2 layout"):
        pl.attach(model, pl.IA3(feedforward_slots=("ffn.outt",)))
    _assert_unchanged(model, before)
