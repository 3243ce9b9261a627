"""Methods placed by module name work on architectures peftlab has no layout for (as HF PEFT's do):
LoRA on DistilBERT, OPT and Qwen3 attaches, trains, saves, loads and merges; slot-placed methods say
the slot does not exist there."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import peftlab as pl


def _model(arch: str):
    torch.manual_seed(0)
    if arch == "distilbert":
        return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=64, dim=16, n_layers=2, n_heads=4, hidden_dim=32, max_position_embeddings=32)), ("q_lin", "v_lin")
    if arch == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
                                              num_attention_heads=4, max_position_embeddings=32,
                                              word_embed_proj_dim=16)), ("q_proj", "v_proj")
    return tf.Qwen3ForCausalLM(tf.Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                                              max_position_embeddings=32)), ("q_proj", "v_proj")


def _batch(arch: str) -> dict:
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1]) if arch == "distilbert" else ids
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("arch", ["distilbert", "opt", "qwen3"])
def test_lora_by_module_name_on_a_model_without_a_layout(arch, tmp_path):
    model, names = _model(arch)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pl.attach(model, pl.LoRA(target_modules=names, r=2), name="a")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        model(**_batch(arch)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    trained = model(**_batch(arch)).logits
    pl.save(model, tmp_path / "a")
    fresh, _ = _model(arch)
    pl.load(fresh, tmp_path / "a")
    fresh.eval()
    torch.testing.assert_close(fresh(**_batch(arch)).logits, trained, rtol=0, atol=1e-6)
    pl.merge(fresh, "a")
    torch.testing.assert_close(fresh(**_batch(arch)).logits, trained, rtol=1e-5, atol=1e-5)
    pl.detach(model, "a")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_a_slot_placed_method_on_a_model_without_a_layout_names_the_missing_slot():
    model, _ = _model("opt")
    with pytest.raises(pl.PeftlabError, match=r"slot '.*': model type 'opt' has no peftlab layout"):
        pl.attach(model, pl.Houlsby())


def test_target_modules_takes_a_string_a_regex_and_all_linear():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny_model

    def lora_layers(config):
        model = tiny_model("llama")
        pl.attach(model, config)
        return {n.split(".parts.")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert lora_layers(pl.LoRA(target_modules="q_proj")) == lora_layers(pl.LoRA(target_modules=["q_proj"]))
    regex = lora_layers(pl.LoRA(target_modules=r".*layers\.0\.self_attn\.(q|v)_proj"))
    assert regex == {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"}
    every = lora_layers(pl.LoRA(target_modules="all-linear"))
    assert {p.rsplit(".", 1)[-1] for p in every} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"}       # not the LM head


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_merge_and_unload_gives_a_plain_model_that_round_trips(arch, tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny_batch, tiny_model
    model = tiny_model(arch)
    cls = type(model)
    pl.attach(model, pl.LoRA(r=4), name="a")          # BERT: the classification head trains too
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    batch = {k: v for k, v in tiny_batch(arch).items() if k != "labels"}
    model.eval()
    expected = model(**batch).logits
    plain = pl.merge_and_unload(model)
    assert type(plain) is cls and not any(".parts." in k or "base_layer" in k for k in plain.state_dict())
    torch.testing.assert_close(plain(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    plain.save_pretrained(tmp_path / "merged")
    reloaded = cls.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_refuses_a_prompt_and_changes_nothing():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny_model
    model = tiny_model("t5")
    pl.attach(model, pl.LoRA(r=2), name="lora", activate=False)
    pl.attach(model, pl.PromptTuning(length=3), name="prompt", activate=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match="cannot be merged"):
        pl.merge_and_unload(model, ["lora", "prompt"])
    assert set(pl.adapters(model)) == {"lora", "prompt"}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    pl.unload(model)
    assert not pl.adapters(model)


def test_merging_a_prompt_is_refused_not_ignored():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny_model
    model = tiny_model("t5")
    pl.attach(model, pl.PromptTuning(length=3), name="prompt")
    with pytest.raises(pl.PeftlabError, match="'prompt' .* cannot be merged"):
        pl.merge(model, "prompt")


def test_a_head_with_another_label_count_loads_under_strict_false_and_goes_back_on_detach(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import tiny_config
    config = tiny_config("bert")
    config.num_labels = 3
    source = tf.BertForSequenceClassification(config)
    pl.attach(source, pl.LoRA(r=2), name="a")
    pl.save(source, tmp_path / "a")
    config.num_labels = 2
    target = tf.BertForSequenceClassification(config)
    original = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(pl.PeftlabError):
        pl.load(target, tmp_path / "a")                       # strict: refused
    with pytest.warns(UserWarning, match="3 outputs there and 2 here: replaced by the saved one"):
        pl.load(target, tmp_path / "a", strict=False)
    ids = torch.randint(3, 60, (2, 5))
    assert target(input_ids=ids).logits.shape == (2, 3) and target.config.num_labels == 3
    torch.testing.assert_close(target.classifier.weight, source.classifier.weight)
    pl.detach(target, "a")
    after = target.state_dict()
    assert target.config.num_labels == 2 and all(torch.equal(after[k], v) for k, v in original.items())
