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


def test_unexportable_prefix_is_refused(tmp_path):
    model = tiny_model("t5")
    pl.attach(model, pl.PrefixTuning(prefix_length=2, train_head=False), "a")
    with pytest.raises(pl.PeftlabError, match="decoder-only"):
        pl.export_peft(model, "a", tmp_path / "x")


def _trained_peft_t5_prompt(tmp_path, **config):
    """PEFT's default T5 prompt tuning (num_transformer_submodules=2: 2m stored rows), trained 3 steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model("t5"), peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", **config))
    optimizer = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=0.1)
    for step in range(3):
        ref(**tiny_batch("t5", seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    ref.save_pretrained(tmp_path / "two")
    return ref.eval()


def test_t5_prompt_with_peft_default_two_submodules_loads_with_peft_logits(tmp_path):
    ref = _trained_peft_t5_prompt(tmp_path, num_virtual_tokens=3)
    assert ref.peft_config["default"].num_transformer_submodules == 2
    model, batch = tiny_model("t5"), tiny_batch("t5")
    with pytest.warns(UserWarning, match="rows 3..5 of prompt_embeddings .* not imported"):
        pl.load(model, tmp_path / "two")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref(**batch).logits, rtol=0, atol=1e-5)
        expected = ref.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=4, do_sample=False)
        got = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=4, do_sample=False)
    assert torch.equal(got, expected)


def test_a_prompt_tensor_of_the_wrong_row_count_is_refused_and_the_model_unchanged(tmp_path):
    from safetensors.torch import load_file, save_file
    _trained_peft_t5_prompt(tmp_path, num_virtual_tokens=3)
    weights = tmp_path / "two" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({"prompt_embeddings": tensors["prompt_embeddings"][:5]}, str(weights))
    fresh = tiny_model("t5")
    with pytest.raises(pl.PeftlabError, match=r"shape \[5, 16\], expected \[6, width\]"):
        pl.load(fresh, tmp_path / "two")
    assert not hasattr(fresh, "_peftlab")
