"""(IA)^3 (Liu et al.): learned vectors rescale keys, values and the FFN intermediate; init ones.

Keys and values are scaled at the projection's output; the FFN intermediate is scaled at the input of
the FFN's output projection (l * act(W1 x), then W2), as the paper writes it and HF PEFT stores it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import LayeredConfig, check
from ..registry import register_method
from ..runtime import Part
from ..targeting import LayerSelection, feature_dims
from .lora import lora_sites


@dataclass
class IA3(LayeredConfig):
    slots: tuple[str, ...] = ("attn.k", "attn.v", "ffn.out")
    feedforward_slots: tuple[str, ...] = ("ffn.out",)
    target_modules: tuple[str, ...] | None = None
    feedforward_modules: tuple[str, ...] = ()

    def validate(self):
        check(bool(self.slots) or bool(self.target_modules), "IA3 needs slots or target_modules")

    @property
    def identity_at_init(self) -> bool:
        return True

    @property
    def mergeable(self) -> bool:
        return True


class IA3Part(Part):
    def __init__(self, dim: int, feedforward: bool):
        super().__init__()
        self.role = "input" if feedforward else "output"
        self.ia3_l = nn.Parameter(torch.ones(dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.ia3_l.to(t.dtype)

    def merge_scale(self):
        return self.ia3_l, ("in" if self.role == "input" else "out")


def build_ia3(target, *, slots, feedforward_slots, target_modules, feedforward_modules, layers, encoder_layers,
              decoder_layers, leave_out):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    if target_modules:
        ff_paths = {s.path for s in target.pattern_sites(feedforward_modules, selection)} if feedforward_modules else set()
    else:
        # every feedforward slot is resolved, so that a misspelt one is an error naming it, not a no-op;
        # only those among `slots` are placed (the default ffn.out is ignored when slots leave it out)
        sites = {slot: target.sites(slot, selection) for slot in feedforward_slots}
        ff_paths = {s.path for slot in feedforward_slots if slot in slots for s in sites[slot]}
    for site in lora_sites(target, slots, target_modules, selection):
        dims = feature_dims(target.module(site.path))
        check(dims is not None, f"IA3 cannot scale {site.path}: it is not a linear projection")
        feedforward = site.path in ff_paths
        target.place(site, IA3Part(dims[0] if feedforward else dims[1], feedforward))


register_method("ia3", IA3, build_ia3, aliases=("(ia)3",))
