"""Prompt tuning: HF PEFT parity, generate() with the KV cache, initializations, counts, bad input."""
from __future__ import annotations

import warnings

import pytest
import torch

import peftlab as pl
from peftlab.params_table import count
from tiny import VOCAB, tiny_batch, tiny_model

peft = pytest.importorskip("peft")
PEFT_TASK = {"t5": "SEQ_2_SEQ_LM", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM", "bert": "SEQ_CLS"}

def generate_vs_manual(model, arch: str, steps: int = 5, seed: int = 4):
    """Greedy `generate()` (cache on) and a step-by-step forward without cache, from the same input.

    Returns (generated tokens, manual tokens, generate's per-step logits, manual per-step logits)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    model.generation_config.eos_token_id = None      # run every step; tiny models emit eos at random
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    gen_logits = torch.stack(out.logits, dim=1)
    manual_logits = []
    with torch.no_grad():
        if arch in ("t5", "bart"):
            start = model.config.decoder_start_token_id
            current = torch.full((2, 1), start, dtype=torch.long)
            for _ in range(steps):
                logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=current,
                               use_cache=False).logits[:, -1]
                manual_logits.append(logits)
                current = torch.cat([current, logits.argmax(-1, keepdim=True)], dim=1)
            tokens = current
        else:
            current = ids
            for _ in range(steps):
                logits = model(input_ids=current, use_cache=False).logits[:, -1]
                manual_logits.append(logits)
                current = torch.cat([current, logits.argmax(-1, keepdim=True)], dim=1)
            tokens = current
    return out.sequences, tokens, gen_logits, torch.stack(manual_logits, dim=1)


def _prompt(model, name="a"):
    return model.peftlab_adapters[name].prompt.embedding


def _peft_prompt_model(arch, prompt):
    kwargs = {"num_transformer_submodules": 1} if arch == "t5" else {}   # the papers' encoder-only prompt
    config = peft.PromptTuningConfig(task_type=PEFT_TASK[arch], num_virtual_tokens=prompt.shape[0], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(tiny_model(arch), config)
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return ref.eval()


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama", "bert"])
def test_same_logits_and_loss_as_hf_peft(arch):
    """Same prompt tensor -> same logits (and loss) as HF PEFT. Causal LMs return logits for the m
    virtual tokens too, as PEFT does; BERT pools token 0, which is a virtual token, as PEFT does."""
    model, batch = tiny_model(arch), tiny_batch(arch)
    pl.attach(model, pl.PromptTuning(length=4, seed=3), "a")
    ref = _peft_prompt_model(arch, _prompt(model))
    if arch == "bert":   # PEFT trains a copy of the head; both start from the same weights
        batch = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ours, theirs = model(**batch), ref(**batch)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=1e-5)
    if arch != "bert":
        torch.testing.assert_close(ours.loss, theirs.loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_generate_with_cache_equals_manual_loop_without_cache(arch):
    model = tiny_model(arch)
    pl.attach(model, pl.PromptTuning(length=3), "a")
    with torch.no_grad():
        _prompt(model).mul_(4.0)   # a strong prompt, so it visibly steers generation
    generated, manual, gen_logits, manual_logits = generate_vs_manual(model, arch)
    assert torch.equal(generated, manual)
    torch.testing.assert_close(gen_logits, manual_logits, rtol=0, atol=1e-5)
    pl.deactivate(model)
    plain = generate_vs_manual(model, arch)[2]
    assert (plain - gen_logits).abs().max() > 1e-4     # the prompt did change what was generated


def test_causal_lm_labels_are_extended_with_ignored_positions():
    model, batch = tiny_model("gpt2"), tiny_batch("gpt2")
    pl.attach(model, pl.PromptTuning(length=4), "a")
    with torch.no_grad():
        out = model(**batch)
    # -100 on the 4 virtual positions: the last virtual token predicts the first real one, and so on
    logits = out.logits[:, 3:-1]
    targets = batch["labels"]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)


def test_random_init_is_uniform_in_half_open_unit_interval_around_zero():
    model = tiny_model("t5")
    pl.attach(model, pl.PromptTuning(length=50, init="random"), "a")
    prompt = _prompt(model)
    assert prompt.shape == (50, 16)
    assert prompt.min() >= -0.5 and prompt.max() < 0.5 and prompt.std() > 0.2


def test_vocab_init_first_ids_and_seeded_sample():
    model = tiny_model("gpt2")
    table = model.get_input_embeddings().weight.detach().clone()
    pl.attach(model, pl.PromptTuning(length=5, init="vocab"), "first")
    assert torch.equal(_prompt(model, "first"), table[:5])
    pl.attach(model, pl.PromptTuning(length=5, init="vocab", vocab_ids="sample", seed=7), "sampled")
    ids = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(7))[:5]   # range(5000) capped at VOCAB
    assert torch.equal(_prompt(model, "sampled"), table[ids])


def test_text_init_repeats_the_token_embeddings():
    model = tiny_model("llama")
    table = model.get_input_embeddings().weight.detach().clone()
    pl.attach(model, pl.PromptTuning(length=5, init="text", init_token_ids=[7, 9]), "a")
    assert torch.equal(_prompt(model), table[[7, 9, 7, 9, 7]])


def test_prompt_tuning_on_t5_base_trains_76800_parameters():
    trainable, base = count("t5-base", pl.PromptTuning(length=100, init="vocab"))
    assert trainable == 76_800
    assert round(100 * trainable / base, 3) == 0.034


def test_save_load_reproduces_the_prompt_exactly(tmp_path):
    model, batch = tiny_model("bart"), tiny_batch("bart")
    pl.attach(model, pl.PromptTuning(length=4), "a")
    with torch.no_grad():
        _prompt(model).add_(1.0)
        expected = model(**batch).logits
    pl.save(model, tmp_path / "p")
    fresh = tiny_model("bart")
    pl.load(fresh, tmp_path / "p")
    torch.testing.assert_close(fresh(**batch).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("config,message", [
    (dict(length=64), "prompt length 64 leaves no room"),          # tiny GPT-2 has 64 positions
    (dict(length=VOCAB + 1, init="vocab"), f"larger than the vocabulary \\({VOCAB} tokens\\)"),
    (dict(length=4, init="text"), "needs init_token_ids"),
    (dict(length=4, init="text", init_token_ids=[VOCAB + 5]), "outside the vocabulary"),
    (dict(length=0), "length must be >= 1"),
])
def test_bad_prompt_configs_raise_and_leave_the_model_unchanged(config, message):
    model = tiny_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match=message):
        pl.attach(model, pl.PromptTuning(**config), "a")
    assert not hasattr(model, "_peftlab") and not model._forward_pre_hooks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_text_init_with_a_real_tokenizer_on_pretrained_minilm():
    from peftlab.models import load_pretrained, offline_path
    if offline_path("minilm") is None or not offline_path("minilm").exists():
        pytest.skip("offline MiniLM package not installed")
    model, tokenizer = load_pretrained("minilm")
    ids = tokenizer("classify the sentiment", add_special_tokens=False)["input_ids"]
    pl.attach(model, pl.PromptTuning(length=7, init="text", init_text="classify the sentiment",
                                     tokenizer="minilm"), "a")
    table = model.get_input_embeddings().weight
    assert torch.equal(_prompt(model), table[(ids * 7)[:7]])
    batch = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)
