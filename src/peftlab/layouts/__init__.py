"""Per-architecture structure maps, as data.

A layout names where the generic slots live in one architecture. Stacks are found by the suffix of a
ModuleList's name (so `bert.encoder.layer` and `encoder.layer` both match "encoder.layer"); slots are
paths relative to one layer. A slot may list several candidate paths: every one that exists is used
(T5's gated FFN has `wi_0` and `wi_1`; encoder and decoder blocks differ in their sublayer index).

Generic slots: attn.q attn.k attn.v attn.o (attn.qkv where fused), cross_attn.q/k/v/o, ffn.in ffn.out,
attn (the self-attention module), attn_block_out and ffn_block_out (the module whose output is the
sublayer's output just before the residual add), norms (per-layer norms).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import PeftlabError


@dataclass(frozen=True)
class StackLayout:
    path: str                                   # suffix of the ModuleList holding the layers
    slots: Mapping[str, tuple[str, ...]]        # slot -> candidate paths relative to one layer
    final_norm: str | None = None               # suffix of the stack's final norm, if any
    causal: bool = False                        # self-attention is causal (decoder stacks)


@dataclass(frozen=True)
class Layout:
    name: str
    model_types: tuple[str, ...]
    stacks: Mapping[str, StackLayout]
    embeddings: tuple[str, ...]                 # suffixes of input token embedding modules
    lm_head: str | None = "lm_head"
    heads: tuple[str, ...] = ("classifier", "score", "classification_head", "qa_outputs")
    aliases: Mapping[str, str] = field(default_factory=dict)   # slot -> slot it resolves to here
    attention: Mapping[str, object] = field(default_factory=dict)  # how attention is computed

    def slot_names(self) -> list[str]:
        names = {s for stack in self.stacks.values() for s in stack.slots} | set(self.aliases)
        return sorted(names)

    def resolve_alias(self, slot: str) -> str:
        return self.aliases.get(slot, slot)


def _all_layouts() -> list[Layout]:
    from . import bart, bert, gpt2, llama, t5
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
