"""The attached model stays the user's own transformers model: HF Trainer, generate(), several adapters."""
from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch.utils.data import Dataset

import peftlab as pl
from tiny import tiny_batch, tiny_model


class _Repeat(Dataset):
    def __init__(self, batch, n=32):
        self.rows = [{k: v[i % len(v)] for k, v in batch.items()} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("arch", ["bert", "t5"])   # (a tiny random GPT-2's tied 0.02-std head barely moves)
def test_lora_trains_inside_hf_trainer_and_loss_goes_down(arch, tmp_path):
    model = pl.attach(tiny_model(arch), pl.LoRA(r=8, alpha=32, slots=("attn.q", "attn.v", "attn.o", "ffn.out")))
    data = _Repeat(tiny_batch(arch))
    args = tf.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-1,
                                num_train_epochs=6, logging_steps=1, save_strategy="no", report_to=[],
                                use_cpu=True, disable_tqdm=True, seed=0)
    trainer = tf.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all("lora_" not in n for n in frozen)


@pytest.mark.parametrize("arch", ["gpt2", "t5", "llama", "bart"])
@pytest.mark.parametrize("method", [pl.LoRA(), pl.Houlsby(reduction_factor=4), pl.IA3()], ids=lambda m: m.method)
def test_generate_works_and_uses_the_adapter(arch, method):
    model = tiny_model(arch)
    ids = tiny_batch(arch)["input_ids"][:1]
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=model.config.pad_token_id)
    base = model.generate(ids, **kwargs)
    pl.attach(model, method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 2.0)
    adapted = model.generate(ids, **kwargs)
    assert adapted.shape == base.shape
    pl.deactivate(model)
    assert torch.equal(model.generate(ids, **kwargs), base)


def test_two_adapters_activate_and_deactivate():
    model = tiny_model("llama")
    batch = {k: v for k, v in tiny_batch("llama").items() if k != "labels"}
    with torch.no_grad():
        base = model(**batch).logits
    pl.attach(model, pl.LoRA(), name="a")
    pl.attach(model, pl.IA3(), name="b")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
        outputs = {}
        for active in [("a",), ("b",), ("a", "b"), ()]:
            pl.activate(model, *active) if active else pl.deactivate(model)
            outputs[active] = model(**batch).logits
    torch.testing.assert_close(outputs[()], base, rtol=0, atol=0)
    assert not torch.allclose(outputs[("a",)], outputs[("b",)])
    assert not torch.allclose(outputs[("a", "b")], outputs[("a",)])
    pl.detach(model, "a")
    pl.activate(model, "b")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, outputs[("b",)], rtol=0, atol=1e-6)


def test_attach_freezes_base_and_trains_new_classifier_head():
    model = pl.attach(tiny_model("roberta"), pl.LoRA())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("classifier.") for n in trainable)
    assert all("lora_" in n or n.startswith("classifier.") for n in trainable)


def test_summary_table_names_method_and_count():
    model = pl.attach(tiny_model("t5"), pl.LoRA(r=2), name="rte")
    table = pl.summary(model)
    count = pl.trainable_parameters(model)[0]
    assert "rte" in table and "lora" in table and f"{count:,}" in table
    total = sum(p.numel() for p in model.parameters())
    assert pl.trainable_parameters(model) == (count, total)


def test_dynamic_adapterdrop_skips_lowest_layers_at_inference():
    model = tiny_model("bert")
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    pl.attach(model, pl.Houlsby(reduction_factor=4, drop_inference_layers=2, drop_max_layers=1, train_head=False))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
        dropped = model(**batch).logits
        pl.deactivate(model)
        base = model(**batch).logits
    torch.testing.assert_close(dropped, base, rtol=0, atol=0)   # both tiny layers are below 2
