"""The multi-adapter of jiant / nlprunners ("weighted_sum"): per module, a weighted mix of the member
adapters' outputs and (with `include_base`) the base model's own output, with weights from a softmax,
sigmoid gates or free weights; one weight set for the model, one per layer, or k chunks of layers; an
optional `flex` adapter after the mix. Attach it explicitly (`pl.attach(model, pl.WeightedSum(...))`, or
its config with `sources` to load the members), then activate its block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .. import observe
from ..config import MethodConfig, check
from ..registry import register_method
from ..runtime import Part
from .bottleneck import BottleneckNet
from .mixing import member_sites


@dataclass
class WeightedSumConfig(MethodConfig):
    adapters: tuple[str, ...] = ()
    mode: Literal["softmax", "gates", "weights"] = "softmax"
    num_weight_sets: int = -1                  # 1: one global set; -1: one per layer; k: k chunks of layers
    include_base: bool = True                  # the base model's own output is a branch of the mix
    flex: bool = False                         # a bottleneck adapter after the mix (zero-initialized)
    flex_reduction_factor: float = 16.0
    train_mode: Literal["base", "flex", "base_ft", "full_ft"] = "base"
    sources: dict[str, str] = field(default_factory=dict)   # member -> saved adapter dir, loaded if absent

    def frozen_members(self):
        return () if self.train_mode == "full_ft" else self.adapters

    def mixed_members(self):
        return self.adapters

    def member_sources(self):
        return dict(self.sources)

    def validate(self):
        check(len(self.adapters) >= 1, "WeightedSum needs at least one adapter")
        check(self.num_weight_sets == -1 or self.num_weight_sets >= 1,
              f"WeightedSum num_weight_sets must be -1 or >= 1, got {self.num_weight_sets}")
        check(self.train_mode != "flex" or self.flex, "WeightedSum train_mode 'flex' needs flex=True")
        unknown = [k for k in self.sources if k not in self.adapters]
        check(not unknown, f"WeightedSum sources: '{unknown[0] if unknown else ''}' is not one of the adapters")
        check(self.flex_reduction_factor > 0,
              f"WeightedSum flex_reduction_factor must be positive, got {self.flex_reduction_factor}")


class WeightedMix(Part):
    """sum_i w_i * branch_i with w from one of the shared weight sets, then the optional flex adapter.

    The first part placed owns every weight set (registered there, so saved once); the others refer to it."""

    role = "mix"

    def __init__(self, sets, index: int, labels, series: str, mode: str, include_base: bool, flex):
        super().__init__()
        if isinstance(sets, WeightedMix):
            self.__dict__["owner"] = sets
        else:
            self.weights = nn.Parameter(sets)
            self.__dict__["owner"] = self
        self.index, self.labels, self.series, self.mode, self.include_base = index, list(labels), series, mode, include_base
        self.flex = flex

    def mixing_weights(self) -> torch.Tensor:
        raw = self.owner.weights[self.index]
        if self.mode == "softmax":
            return torch.softmax(raw, dim=-1)
        return torch.sigmoid(raw) if self.mode == "gates" else raw

    def forward(self, h, outputs):
        weights = self.mixing_weights()
        observe.record(self.series, self.labels, weights)
        branches = ([h] if self.include_base else []) + list(outputs)
        mixed = sum(w.to(h.dtype) * b for w, b in zip(weights, branches))
        if self.flex is not None:
            x = mixed.to(self.flex.down.weight.dtype)
            mixed = mixed + self.flex.branch(x).to(h.dtype)
        return mixed


# --- builder ---------------------------------------------------------------------------------------

def _ordinals(target) -> tuple[dict, int]:
    """(stack, layer) -> position among all layers of all stacks, and the number of layers."""
    ordinals, total = {}, 0
    for stack, (_, n_layers) in target.stacks().items():
        for layer in range(n_layers):
            ordinals[(stack, layer)] = total + layer
        total += n_layers
    return ordinals, total


def _initial_weights(mode: str, n_sets: int, n_branches: int) -> torch.Tensor:
    """Every mode starts as an even mix (weights summing to one)."""
    if mode == "softmax":
        return torch.zeros(n_sets, n_branches)
    share = 1.0 / n_branches
    if mode == "weights":
        return torch.full((n_sets, n_branches), share)
    share = min(share, 0.98)
    return torch.full((n_sets, n_branches), math.log(share / (1 - share)))


def build_weighted_sum(target, *, adapters, mode, num_weight_sets, include_base, flex, flex_reduction_factor,
                       train_mode, sources):
    sites = member_sites(target, adapters)
    ordinals, total = _ordinals(target)
    n_sets = total if num_weight_sets == -1 else num_weight_sets
    check(n_sets <= total, f"WeightedSum num_weight_sets {num_weight_sets} exceeds the model's {total} layers")
    labels = (["base"] if include_base else []) + list(adapters)
    sets = _initial_weights(mode, n_sets, len(labels))
    for site in sites:
        ordinal = ordinals.get((site.stack, site.layer), 0)
        net = None
        if flex:
            d = target.width(site.path)
            k = max(1, int(d // flex_reduction_factor))
            check(k <= 16 * d, f"WeightedSum flex_reduction_factor {flex_reduction_factor} gives a width of {k}")
            net = BottleneckNet(d, k, "relu", False, False, 1.0, "zero_up")
            net.requires_grad_(train_mode in ("flex", "full_ft"))
        series = f"{target.name}/{site.stack}.{site.layer}" if site.layer is not None else f"{target.name}/{site.path}"
        part = WeightedMix(sets, ordinal * n_sets // max(total, 1), labels, series, mode, include_base, net)
        sets = part.owner if isinstance(sets, torch.Tensor) else sets
        target.place(site, part)
    if train_mode in ("base_ft", "full_ft"):
        target.claim(list(target.base_parameters()))


register_method("weighted_sum", WeightedSumConfig, build_weighted_sum, aliases=("multi_adapter",),
                example=lambda model, tmp: None)
