"""The shape of a layout: where the generic slots live in one architecture (see the package doc)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


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
