"""The adapters that hold mixing parameters: AdapterFusion ("fusion") and the jiant multi-adapter
("weighted_sum"). They are ordinary attachments (saved, loaded, detached and counted like any method);
`activate(model, Fuse(...))` / `WeightedSum(...)` attaches them on first use.

Each places one "mix" part at every module where a member adapter acts on the output; the Slot hands
that part the module's output h and the members' outputs (see evaluate.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .. import observe
from ..config import MethodConfig, check
from ..errors import PeftlabError
from ..registry import register_method
from ..surgery import Part, Slot
from ..targeting import Site, feature_dims

MIXING_METHODS = ("fusion", "weighted_sum")


@dataclass
class FusionConfig(MethodConfig):
    adapters: tuple[str, ...] = ()
    temperature: float = 1.0
    sources: dict[str, str] = field(default_factory=dict)   # member -> saved adapter dir, loaded if absent

    def frozen_members(self):
        return self.adapters

    def validate(self):
        check(len(self.adapters) >= 1, "FusionConfig.adapters must name at least one adapter")
        unknown = [k for k in self.sources if k not in self.adapters]
        check(not unknown, f"Fuse sources: '{unknown[0] if unknown else ''}' is not one of the adapters")
        check(self.temperature > 0, f"FusionConfig.temperature must be positive, got {self.temperature}")


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

    def validate(self):
        check(len(self.adapters) >= 1, "WeightedSum needs at least one adapter")
        check(self.num_weight_sets == -1 or self.num_weight_sets >= 1,
              f"WeightedSum num_weight_sets must be -1 or >= 1, got {self.num_weight_sets}")
        check(self.train_mode != "flex" or self.flex, "WeightedSum train_mode 'flex' needs flex=True")
        unknown = [k for k in self.sources if k not in self.adapters]
        check(not unknown, f"WeightedSum sources: '{unknown[0] if unknown else ''}' is not one of the adapters")
        check(self.flex_reduction_factor > 0,
              f"WeightedSum flex_reduction_factor must be positive, got {self.flex_reduction_factor}")


class FusionPart(Part):
    """Attention of the module's output (query) over the members' outputs (keys, values)."""

    role = "mix"

    def __init__(self, d: int, labels, series: str, temperature: float):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        for linear in (self.query, self.key):
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        with torch.no_grad():   # values start as the identity: the fused output is a mix of the outputs
            self.value.weight.copy_(torch.eye(d))
            self.value.bias.zero_()
        self.labels, self.series, self.temperature = list(labels), series, temperature

    def forward(self, h, outputs):
        dtype = self.query.weight.dtype
        ys = torch.stack([y.to(dtype) for y in outputs], dim=-2)              # (..., n, d)
        scores = (self.query(h.to(dtype)).unsqueeze(-2) * self.key(ys)).sum(-1) / self.temperature
        probs = torch.softmax(scores, dim=-1)                                 # (..., n)
        observe.record(self.series, self.labels, probs.reshape(-1, len(self.labels)).mean(0))
        return (probs.unsqueeze(-1) * self.value(ys)).sum(-2).to(h.dtype)


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


# --- builders --------------------------------------------------------------------------------------

def member_sites(target, adapters) -> list[Site]:
    """Modules where a member acts on the output, in model order; raise on a member that cannot mix."""
    controller = target.controller
    paths = set()
    for name in adapters:
        attachment = controller.adapters.get(name)
        if attachment is None:
            raise PeftlabError(f"cannot mix '{name}': no adapter of that name is attached")
        if attachment.config.method in MIXING_METHODS:
            raise PeftlabError(f"cannot mix '{name}': it is itself a mixing adapter ({attachment.config.method})")
        for path, part in attachment.parts:
            if part.role == "input":
                raise PeftlabError(f"cannot mix '{name}': its {type(part).__name__} at {path} changes the "
                                   f"module's input; only adapters acting on outputs can be mixed")
            if part.role in ("add", "output"):
                paths.add(path)
    sites = [Site(m.stack, m.layer, "mix", m.path) for _, m in target.model.named_modules()
             if isinstance(m, Slot) and m.path in paths]
    if not sites:
        raise PeftlabError(f"adapters {list(adapters)} act on no module output: nothing to mix")
    return sites


def _width(target, path) -> int:
    module = target.module(path)
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    dims = feature_dims(module)
    return dims[1] if dims else target.hidden_size


def build_fusion(target, *, adapters, temperature, sources):
    load_sources(target, sources)
    for site in member_sites(target, adapters):
        series = f"{target.name}/{site.path}"
        target.place(site, FusionPart(_width(target, site.path), adapters, series, temperature))


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


def load_sources(target, sources: dict) -> None:
    """Load saved members that are not attached yet (frozen). They stay ordinary adapters; if this
    attach fails they are removed again, and detaching the mixer removes them too."""
    from ..io import load
    from .blocks import without
    controller = target.controller
    for name, directory in sources.items():
        if name in controller.adapters:
            continue
        load(target.model, directory, name, trainable=False, activate=False)
        attachment = controller.adapters[name]

        def remove(name=name, attachment=attachment):
            if controller.adapters.get(name) is attachment:
                controller.adapters.pop(name)
                attachment.journal.rollback()
                controller.active = without(controller.active, name)

        target.journal.record(remove)


def build_weighted_sum(target, *, adapters, mode, num_weight_sets, include_base, flex, flex_reduction_factor,
                       train_mode, sources):
    from ..methods.bottleneck import BottleneckNet
    load_sources(target, sources)
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
            d = _width(target, site.path)
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


register_method("fusion", FusionConfig, build_fusion, aliases=("adapter_fusion",), example=lambda arch, tmp: None)
register_method("weighted_sum", WeightedSumConfig, build_weighted_sum, aliases=("multi_adapter",),
                example=lambda arch, tmp: None)
