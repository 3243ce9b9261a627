"""What one forward call carries about incremental decoding, whatever transformers calls it.

transformers has renamed the KV cache keyword before (`past_key_values` -> `cache` in 5.24) and drops or
adds side inputs (`cache_position`) between releases. Hooks that must tell a first step from a
continuation step (prompts prepend their tokens only once; prefixes shift positions after the cached
tokens) ask this module, which reads what the step really holds: the cache object under any of the names
it has had, else `cache_position`, else an attention mask longer than the new tokens.
"""
from __future__ import annotations

import torch

# Every keyword under which a transformers release has handed the KV cache to a model's forward.
CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value", "layer_past", "cache_params")


def cache_of(kwargs: dict):
    """The KV cache this call carries (a `Cache` object or a legacy tuple), or None."""
    for key in CACHE_KEYWORDS:
        value = kwargs.get(key)
        if value is not None:
            return value
    return None


def cached_length(cache) -> int:
    """Tokens already held by `cache` (0 for an empty cache)."""
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache:   # legacy: per layer (key, value, ...), keys (b, h, n, d)
        first = cache[0]
        key = first[0] if isinstance(first, (tuple, list)) and first else first
        return int(key.shape[-2]) if torch.is_tensor(key) and key.dim() >= 2 else 0
    return 0


def past_length(kwargs: dict, new_tokens: int | None) -> int:
    """How many earlier tokens the inputs of this call follow: 0 on a first (or uncached) step."""
    cache = cache_of(kwargs)
    if cache is not None:
        return cached_length(cache)
    position = kwargs.get("cache_position")
    if torch.is_tensor(position) and position.numel():
        return int(position.reshape(-1)[0])
    mask = kwargs.get("attention_mask")
    if new_tokens is not None and torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[-1] > new_tokens:
        return int(mask.shape[-1] - new_tokens)
    return 0


def new_token_count(args: tuple, kwargs: dict) -> int | None:
    """Length of this call's new input (input_ids or inputs_embeds), or None when it carries neither."""
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if torch.is_tensor(value):
            return int(value.shape[1])
    if args and torch.is_tensor(args[0]) and args[0].dim() >= 2:
        return int(args[0].shape[1])
    return None


def is_continuation(args: tuple, kwargs: dict) -> bool:
    """True when this call continues a sequence whose earlier tokens sit in the KV cache."""
    return past_length(kwargs, new_token_count(args, kwargs)) > 0
