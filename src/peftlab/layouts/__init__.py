"""Per-architecture structure maps, as data.

A layout names where the generic slots live in one architecture. Stacks are found by the suffix of a
ModuleList's name (so `bert.encoder.layer` and `encoder.layer` both match "encoder.layer"); slots are
paths relative to one layer. A slot may list several candidate paths: every one that exists is used
(T5's gated FFN has `wi_0` and `wi_1`; encoder and decoder blocks differ in their sublayer index).

Generic slots: attn.q attn.k attn.v attn.o (attn.qkv where fused), cross_attn.q/k/v/o, ffn.in ffn.out,
attn (the self-attention module), attn_block_out and ffn_block_out (the module whose output is the
sublayer's output just before the residual add), norms (per-layer norms); in post-norm layouts,
attn_block_norm and ffn_block_norm (the norm over that output plus the residual). attn_residual and
ffn_residual: the module whose input is the residual stream around the sublayer (pre-norm: the norm in
front of it; post-norm: its first projection); attn_add_norm and ffn_add_norm (post-norm layouts): the
norm over sublayer output plus residual, for methods that call it themselves (AdapterHub's adapters).
"""
from __future__ import annotations

from torch import nn

from ..errors import PeftlabError
from . import bart, bert, gpt2, llama, t5
from .base import Layout, StackLayout

__all__ = ["Layout", "StackLayout", "generic_layout", "layout_for", "layout_for_model_type", "supported_model_types"]


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
    """The model's layout; for an architecture without one, a generic layout that knows only its stack
    of layers (the longest ModuleList), so that methods placed by module name (LoRA, IA3, BitFit,
    adapters on named modules) work on any model, as HF PEFT's do, and slot-placed methods say that the
    slot does not exist here."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise PeftlabError(f"{type(model).__name__} has no config.model_type; pass a transformers model")
    for layout in _all_layouts():
        if model_type in layout.model_types:
            return layout
    return generic_layout(model, model_type)


def generic_layout(model, model_type: str) -> Layout:
    lists = [(path, len(module)) for path, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) > 0]
    stacks = {}
    if lists:
        path, _ = max(lists, key=lambda item: item[1])
        stacks["layers"] = StackLayout(path=path, slots={})
    embeddings = tuple(path for path, module in model.named_modules() if module is model.get_input_embeddings())
    return Layout(name=f"generic ({model_type}: no peftlab layout; place methods by module name)",
                  model_types=(), stacks=stacks, embeddings=embeddings)
