"""Per-architecture structure maps, as data.

A layout names where the generic slots live in one architecture. Stacks are found by the suffix of a
ModuleList's name (so `bert.encoder.layer` and `encoder.layer` both match "encoder.layer"); slots are
paths relative to one layer. A slot may list several candidate paths: every one that exists is used
(T5's gated FFN has `wi_0` and `wi_1`; encoder and decoder blocks differ in their sublayer index).

Generic slots: attn.q attn.k attn.v attn.o (attn.qkv where fused), cross_attn.q/k/v/o, ffn.in ffn.out,
attn (the self-attention module), attn_block_out and ffn_block_out (the module whose output is the
sublayer's output just before the residual add), norms (per-layer norms); in post-norm layouts,
attn_block_norm and ffn_block_norm (the norm over that output plus the residual).
"""
from __future__ import annotations

from ..errors import PeftlabError
from . import bart, bert, gpt2, llama, t5
from .base import Layout, StackLayout

__all__ = ["Layout", "StackLayout", "layout_for", "layout_for_model_type", "supported_model_types"]


def _all_layouts() -> list[Layout]:
    return [t5.LAYOUT, bart.LAYOUT, bert.LAYOUT, gpt2.LAYOUT, llama.LAYOUT]


def supported_model_types() -> list[str]:
    return sorted(t for layout in _all_layouts() for t in layout.model_types)


def layout_for_model_type(model_type: str) -> Layout:
    for layout in _all_layouts():
        if model_type in layout.model_types:
            return layout
    raise PeftlabError(
        f"model type '{model_type}' has no peftlab layout; supported: {', '.join(supported_model_types())}"
    )


def layout_for(model) -> Layout:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise PeftlabError(f"{type(model).__name__} has no config.model_type; pass a transformers model")
    return layout_for_model_type(model_type)
