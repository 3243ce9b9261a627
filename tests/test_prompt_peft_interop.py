"""Prompt and prefix tuning through HF PEFT's directory format, both directions."""
from __future__ import annotations

import warnings

import pytest
import torch

import peftlab as pl
from tiny import tiny_batch, tiny_model

peft = pytest.importorskip("peft")


def _peft_load(arch, directory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(tiny_model(arch), str(directory)).eval()


@pytest.mark.parametrize("arch,config", [
    ("t5", pl.PromptTuning(length=3, train_head=False)),
    ("llama", pl.PromptTuning(length=3, train_head=False)),
    ("gpt2", pl.PrefixTuning(prefix_length=3, mlp_hidden=8, train_head=False)),   # exported flat
    ("llama", pl.PrefixTuning(prefix_length=3, flat=True, train_head=False)),
])
def test_export_loads_in_peft_with_the_same_logits(arch, config, tmp_path):
    model, batch = tiny_model(arch), tiny_batch(arch)
    pl.attach(model, config, "a")
    with torch.no_grad():
        for p in model.peftlab_adapters["a"].parameters():
            p.add_(0.1)
        expected = model(**batch).logits
    pl.export_peft(model, "a", tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(_peft_load(arch, tmp_path / "peft")(**batch).logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch,config", [
    ("gpt2", peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)),
    ("t5", peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, num_transformer_submodules=1)),
    ("llama", peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)),
])
def test_import_of_a_peft_directory_gives_peft_logits(arch, config, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model(arch), config).eval()
    ref.save_pretrained(tmp_path / "saved")
    batch = tiny_batch(arch)
    model = tiny_model(arch)
    pl.load(model, tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref(**batch).logits, rtol=0, atol=1e-5)


def test_unexportable_prefix_and_decoder_prompts_are_refused(tmp_path):
    model = tiny_model("t5")
    pl.attach(model, pl.PrefixTuning(prefix_length=2, train_head=False), "a")
    with pytest.raises(pl.PeftlabError, match="decoder-only"):
        pl.export_peft(model, "a", tmp_path / "x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model("t5"), peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM",
                                                                           num_virtual_tokens=2))
    ref.save_pretrained(tmp_path / "two")
    fresh = tiny_model("t5")
    with pytest.raises(pl.PeftlabError, match="num_transformer_submodules=2"):
        pl.load(fresh, tmp_path / "two")
    assert not hasattr(fresh, "_peftlab")
