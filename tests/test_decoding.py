"""generate() with the KV cache equals generation without it and a manual loop without any cache, token
for token and logits within 1e-5, for every method that acts on prompts or attention, on every decoding
architecture (grouped key/value heads included), whatever keyword transformers hands the cache under."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import peftlab as pl
from peftlab import decoding
from peftlab.core import attachment_parameters
from peftlab.methods.prompt import save_random_prompts
from test_kernel import lively_model as tiny_model   # weights N(0, 0.3^2): outputs far from zero
from tiny import VOCAB

ARCHS = ("t5", "bart", "gpt2", "llama", "qwen2")
SEQ2SEQ = ("t5", "bart")
STEPS = 5
LORA = pl.LoRA(r=2, alpha=4.0, slots=("attn.q",))
PREFIX = pl.PrefixTuning(prefix_length=3, mlp_hidden=8)


def _configs(arch, tmp_path) -> dict:
    sources = save_random_prompts(tiny_model(arch), tmp_path, count=2, length=4)
    return {
        "prompt_tuning": pl.PromptTuning(length=4, seed=3),
        "spot": pl.SPoT(sources=sources),
        "attempt": pl.Attempt(sources=sources, attn_hidden=8),
        "prefix_tuning": PREFIX,
        "inducer": pl.Inducer(rank_k=3, rank_v=4),
        "inducer_lora": pl.InducerLoRA(rank_k=2, rank_v=3, lora=LORA),
        "inducer_mam": pl.InducerMAM(rank_k=2, rank_v=3, lora=LORA,
                                     parallel_adapter=pl.Parallel(bottleneck_size=4, scaling=1.0)),
        "kernel_adapter": pl.KernelAdapter(per_head=True, query_bias=True),
        "kernel_mix": pl.KernelMix(r_q=2, r_v=2, r_o=2, shared_r_q=2, shared_r_v=2, shared_r_o=2),
        "mam": pl.MAM(prefix=PREFIX, adapter=pl.Parallel(bottleneck_size=4)),
        "unipelt": pl.UniPELT(lora=LORA, prefix=PREFIX, adapter=pl.Pfeiffer(bottleneck_size=4)),
    }


METHODS = (
    "prompt_tuning", "spot", "attempt", "prefix_tuning", "inducer", "inducer_lora", "inducer_mam",
    "kernel_adapter", "kernel_mix", "mam", "unipelt")


@torch.no_grad()
def _lively(model, name: str, seed: int = 5) -> None:
    """Move every adapter tensor off its (often zero) start, so the method visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    for p in attachment_parameters(model, name):
        p.add_(0.3 * torch.randn(p.shape, generator=g))


def _inputs(arch, padded: bool):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, VOCAB, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    if padded:   # left padding, as batched generation with a decoder-only model needs
        mask[0, :2] = 0
        ids[0, :2] = 0
    return ids, mask


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def generate(model, arch, padded=False, use_cache=True, **kwargs):
    ids, mask = _inputs(arch, padded)
    model.generation_config.eos_token_id = None      # run every step; tiny models emit eos at random
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS,
                         do_sample=False, num_beams=1, output_logits=True, return_dict_in_generate=True,
                         use_cache=use_cache, pad_token_id=model.config.pad_token_id, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


@torch.no_grad()
def manual_loop(model, arch, padded=False, **kwargs):
    """Greedy decoding by re-running the whole sequence at every step, with no cache at all."""
    ids, mask = _inputs(arch, padded)
    logits = []
    if arch in SEQ2SEQ:
        current = torch.full((2, 1), model.config.decoder_start_token_id, dtype=torch.long)
        for _ in range(STEPS):
            step = model(input_ids=ids, attention_mask=mask, decoder_input_ids=current, use_cache=False,
                         **kwargs).logits[:, -1]
            logits.append(step)
            current = torch.cat([current, step.argmax(-1, keepdim=True)], dim=1)
        return torch.cat([torch.full((2, 1), model.config.decoder_start_token_id), current[:, 1:]], 1), \
            torch.stack(logits, dim=1)
    current = ids
    for _ in range(STEPS):
        # The generated tokens are targets, not source: labels say so (an input-dependent prompt such as
        # ATTEMPT's reads only the source, as it does inside generate()).
        labels = torch.cat([torch.full_like(ids, -100), current[:, ids.shape[1]:]], dim=1)
        step = model(input_ids=current, attention_mask=mask, position_ids=_positions(mask), use_cache=False,
                     labels=labels, **kwargs).logits[:, -1]
        logits.append(step)
        current = torch.cat([current, step.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
    return current, torch.stack(logits, dim=1)


def assert_same_decoding(model, arch, padded=False, **kwargs):
    cached_tokens, cached_logits = generate(model, arch, padded, **kwargs)
    plain_tokens, plain_logits = generate(model, arch, padded, use_cache=False, **kwargs)
    loop_tokens, loop_logits = manual_loop(model, arch, padded, **kwargs)
    assert torch.equal(cached_tokens, plain_tokens)
    assert torch.equal(cached_tokens, loop_tokens)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached_logits, loop_logits, rtol=0, atol=1e-5)
    return cached_logits


def _applies(arch, method) -> bool:
    return not (arch in SEQ2SEQ and method.startswith("inducer"))   # inducers are decoder-side (GPT-2)


CASES = [(arch, method) for arch in ARCHS for method in METHODS if _applies(arch, method)]


@pytest.mark.parametrize("arch,method", CASES)
def test_cached_generation_equals_uncached_and_a_manual_loop(arch, method, tmp_path):
    model = tiny_model(arch)
    base = generate(model, arch)[1]
    pl.attach(model, _configs(arch, tmp_path)[method], "a")
    _lively(model, "a")
    logits = assert_same_decoding(model, arch)
    assert (logits - base).abs().max() > 1e-3        # the method did change what was generated


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "attempt"])
def test_left_padded_batches_decode_the_same_with_and_without_cache(arch, method, tmp_path):
    model = tiny_model(arch)
    pl.attach(model, _configs(arch, tmp_path)[method], "a")
    _lively(model, "a")
    assert_same_decoding(model, arch, padded=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_routed_mixed_batch_decodes_row_for_row_as_each_adapter_alone(arch):
    model = tiny_model(arch)
    for seed, name in enumerate("ab"):
        pl.attach(model, pl.PromptTuning(length=3, seed=seed), name)
        _lively(model, name, seed=seed)
    names = ["b", "a"]
    mixed = assert_same_decoding(model, arch, adapter_names=names)
    for row, name in enumerate(names):
        pl.activate(model, name)
        alone = generate(model, arch)[1]
        torch.testing.assert_close(mixed[row], alone[row], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["t5", "gpt2", "qwen2"])
def test_multi_task_attempt_decodes_the_same_with_and_without_cache(arch, tmp_path):
    model = tiny_model(arch)
    sources = save_random_prompts(model, tmp_path, count=2, length=4)
    pl.attach(model, pl.Attempt(sources=sources, attn_hidden=8, tasks=("x", "y")), "a")
    _lively(model, "a")
    assert_same_decoding(model, arch, task_ids=torch.tensor([1, 0]))


# --- the step itself, under any cache keyword --------------------------------------------------------

def _cache_with(tokens: int):
    cache = tf.DynamicCache()
    key = torch.zeros(1, 2, tokens, 4)
    cache.update(key, key, layer_idx=0)
    return cache


@pytest.mark.parametrize("keyword", decoding.CACHE_KEYWORDS)
def test_a_continuation_step_is_seen_under_every_cache_keyword(keyword):
    step = {"input_ids": torch.ones(1, 1, dtype=torch.long), keyword: _cache_with(7)}
    assert decoding.past_length(step, 1) == 7
    assert decoding.is_continuation((), step)
    assert not decoding.is_continuation((), {"input_ids": step["input_ids"], keyword: _cache_with(0)})


def test_a_continuation_step_is_seen_from_cache_position_mask_or_a_legacy_cache():
    ids = torch.ones(1, 1, dtype=torch.long)
    assert decoding.past_length({"input_ids": ids, "cache_position": torch.tensor([9])}, 1) == 9
    assert decoding.past_length({"input_ids": ids, "attention_mask": torch.ones(1, 5)}, 1) == 4
    legacy = ((torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 6, 4)),)
    assert decoding.past_length({"past_key_values": legacy}, 1) == 6
    assert decoding.past_length({"input_ids": torch.ones(1, 5), "attention_mask": torch.ones(1, 5)}, 5) == 0
    assert not decoding.is_continuation((torch.ones(1, 5),), {})


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_a_hand_written_cached_loop_matches_whatever_the_cache_keyword(arch, method, tmp_path):
    """A user's own loop passes the cache back under the name its transformers returned it by."""
    model = tiny_model(arch)
    pl.attach(model, _configs(arch, tmp_path)[method], "a")
    _lively(model, "a")
    ids, mask = _inputs(arch, padded=False)
    expected = manual_loop(model, arch)[1]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        keyword = "cache" if "cache" in out else "past_key_values"
        cache, logits = out[keyword], [out.logits[:, -1]]
        for _ in range(STEPS - 1):
            token = logits[-1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, use_cache=True, **{keyword: cache})
            cache = out[keyword]
            logits.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(logits, 1), expected, rtol=0, atol=1e-5)
