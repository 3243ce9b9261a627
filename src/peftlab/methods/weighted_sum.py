"""The multi-adapter of jiant / nlprunners ("weighted_sum"): a learned weighted mix of member adapters.

As `nlpr/proj/adapters/multi_adapter_modeling.py` (37edf66) computes it on post-norm encoders (BERT,
RoBERTa: the layout names each sublayer's norm), per sublayer with output z and residual x:

    out = Σ_k w_k · LN_k(adapter_k(z) + x)  +  w_base · LN_pre(z + x)

each source k with its own trained LayerNorm (the values it was saved with), the base branch with the
model's pretrained LayerNorm (:70-84, 301-339). On pre-norm models, which have no such norm, the mix is
of the sublayer outputs themselves: out = w_base·z + Σ_k w_k·adapter_k(z). Weights: `softmax` (uniform
at the start), `gates` (sigmoid of zeros: 0.5 each) or free `weights` (ones) (:26-35); one set for the
model (`num_weight_sets=1`, the default as in runscript_multi_adapter.py:73), one per layer (-1), or k
chunks of consecutive layers (k must divide the layer count, :543-554). `flex`: an adapter on the mix,
flex(m) = m + up(gelu(down m)), size 64, N(0, 2e-4²) weights (:335, 98-101); train mode `flex` has no
base branch (runscript_multi_adapter.py:83-85). The task head starts fresh (:745-749), or from one
member's (`head_from`). `compat="nlprunners"` normalizes the sources' branches together, one LayerNorm
over (sources, d) with a scale and shift per source, as the optimized path the code's commands use does
(:244-253, 376-380). Attach it explicitly (`pl.attach(model, pl.WeightedSum(...))`, or its config with
`sources` to load the members), then activate its block.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .. import observe
from ..config import MethodConfig, check
from ..registry import register_method
from ..runtime import Handoff, HandoffTap, Part
from ..targeting import Site
from .bottleneck import BottleneckNet
from .mixing import member_sites

FLEX_STD = 2e-4   # nlpr/proj/adapters/modeling.py:11 DEFAULT_ADAPTER_INITIALIZER_RANGE
_NORM_OF = {"attn_block_out": "attn_block_norm", "ffn_block_out": "ffn_block_norm"}


@dataclass
class WeightedSumConfig(MethodConfig):
    adapters: tuple[str, ...] = ()
    mode: Literal["softmax", "gates", "weights"] = "softmax"
    num_weight_sets: int = 1                   # 1: one global set; -1: one per layer; k: k chunks of layers
    include_base: bool = True                  # the base model's own branch is part of the mix
    flex: bool = False                         # an adapter on the mixed output
    flex_size: int | None = 64                 # its width (nlprunners: 64); None: d // flex_reduction_factor
    flex_reduction_factor: float = 16.0
    train_mode: Literal["base", "flex", "base_ft", "full_ft"] = "base"
    head_from: str | None = None               # a member whose trained task head starts this one's
    sources: dict[str, str] = field(default_factory=dict)   # member -> saved adapter, loaded if absent
    compat_choices = ("nlprunners",)

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
        check(self.train_mode != "flex" or not self.include_base,
              "WeightedSum train_mode 'flex' mixes the sources only (nlprunners drops the base branch in flex "
              "mode): set include_base=false")
        unknown = [k for k in self.sources if k not in self.adapters]
        check(not unknown, f"WeightedSum sources: '{unknown[0] if unknown else ''}' is not one of the adapters")
        check(self.head_from is None or self.head_from in self.adapters,
              f"WeightedSum head_from: {self.head_from!r} is not one of the adapters")
        check(self.flex_reduction_factor > 0,
              f"WeightedSum flex_reduction_factor must be positive, got {self.flex_reduction_factor}")
        check(self.flex_size is None or self.flex_size >= 1,
              f"WeightedSum flex_size must be >= 1, got {self.flex_size}")


class WeightSets(nn.Module):
    """The raw mixing weights, (sets, branches); held by the adapter's home, shared by its parts."""

    def __init__(self, values: torch.Tensor, mode: str):
        super().__init__()
        self.weights, self.mode = nn.Parameter(values), mode

    def get(self, index: int) -> torch.Tensor:
        raw = self.weights[index]
        if self.mode == "softmax":
            return torch.softmax(raw, dim=-1)
        return torch.sigmoid(raw) if self.mode == "gates" else raw


class _Mixer(Part):
    def __init__(self, sets: WeightSets, index: int, labels, series: str, flex):
        super().__init__()
        self.__dict__["sets"] = sets              # a plain reference: the home module owns it
        self.index, self.labels, self.series, self.flex = index, list(labels), series, flex

    def weights(self) -> torch.Tensor:
        weights = self.sets.get(self.index)
        observe.record(self.series, self.labels, weights)
        return weights

    def flexed(self, mixed):
        if self.flex is None:
            return mixed
        return mixed + self.flex.branch(mixed.to(self.flex.dtype)).to(mixed.dtype)


class WeightedMix(_Mixer):
    """Pre-norm models: Σ_i w_i · branch_i over the sublayer outputs (the base's, then each member's)."""

    role = "mix"

    def __init__(self, *args, include_base: bool):
        super().__init__(*args)
        self.include_base = include_base

    def forward(self, h, outputs):
        branches = ([h] if self.include_base else []) + list(outputs)
        mixed = sum(w.to(h.dtype) * b for w, b in zip(self.weights(), branches))
        return self.flexed(mixed)


class DeltaHandoff(Part):
    """At a post-norm sublayer's output: hands each member's change Δ_k = adapter_k(z) - z on to the norm,
    and lets z through unchanged (the norm mixes)."""

    role = "mix"

    def __init__(self, handoff: Handoff):
        super().__init__()
        self.handoff = handoff

    def forward(self, h, outputs):
        self.handoff.put([y - h for y in outputs])
        return h


class NormMix(_Mixer):
    """At a post-norm sublayer's LayerNorm, whose input is s = z + x: Σ_k w_k LN_k(s + Δ_k) + w_base LN_pre(s)."""

    role = "output"

    def __init__(self, sets, index, labels, series, flex, *, norms, base_norm, include_base: bool, pooled: bool,
                 deltas: Handoff, inputs: Handoff):
        super().__init__(sets, index, labels, series, flex)
        self.norms, self.base_norm = nn.ModuleList(norms), base_norm
        self.include_base, self.pooled, self.deltas, self.inputs = include_base, pooled, deltas, inputs

    def forward(self, h):
        s, deltas = self.inputs.take(), self.deltas.take(required=False)
        if deltas is None:   # the members do not act at this sublayer: nothing to mix
            return h
        dtype = self.norms[0].weight.dtype
        sources = self._source_branches(s.to(dtype), [d.to(dtype) for d in deltas])
        branches = ([self.base_norm(s.to(dtype))] if self.include_base else []) + sources
        mixed = sum(w.to(dtype) * b for w, b in zip(self.weights(), branches))
        return self.flexed(mixed).to(h.dtype)

    def _source_branches(self, s, deltas) -> list:
        if not self.pooled:
            return [norm(s + delta) for norm, delta in zip(self.norms, deltas)]
        stacked = torch.stack([s + delta for delta in deltas], dim=-2)          # (..., k, d)
        normed = F.layer_norm(stacked, stacked.shape[-2:], eps=self.norms[0].eps)
        return [normed[..., k, :] * norm.weight + norm.bias for k, norm in enumerate(self.norms)]


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
    """softmax: equal logits (uniform weights); gates: zeros (0.5 each); weights: ones."""
    fill = 1.0 if mode == "weights" else 0.0
    return torch.full((n_sets, n_branches), fill)


def _set_count(num_weight_sets: int, layers: int) -> int:
    n_sets = layers if num_weight_sets == -1 else num_weight_sets
    check(n_sets <= layers and layers % n_sets == 0,
          f"WeightedSum num_weight_sets {num_weight_sets} must divide the model's {layers} layers into equal "
          f"chunks (as nlprunners asserts)")
    return n_sets


def _flex_net(target, path, flex_size, flex_reduction_factor, train_mode):
    d = target.width(path)
    k = flex_size or max(1, int(d // flex_reduction_factor))
    net = BottleneckNet(d, k, "gelu", False, False, 1.0, "near_identity", init_std=FLEX_STD)
    return net.requires_grad_(train_mode in ("flex", "full_ft"))


def _norm_copy(target, path: str, values: dict, train: bool) -> nn.Module:
    """A copy of the norm at `path` holding `values` (parameter name -> tensor; absent: the module's own)."""
    norm = copy.deepcopy(target.module(path))
    with torch.no_grad():
        for name, param in norm.named_parameters():
            if name in values:
                param.copy_(values[name])
    return norm.to(**target.placement()).requires_grad_(train)


def _member_norm_values(target, member: str, path: str) -> dict:
    """The values the member was saved with for the norm at `path` (it trained them in place), else {}."""
    loaded = target.controller.adapters[member].loaded_base
    return {n: loaded[f"{path}.{n}"] for n in ("weight", "bias") if f"{path}.{n}" in loaded}


def _pretrained_norm_values(target, path: str) -> dict:
    originals = target.controller.originals
    return {n: originals[f"{path}.{n}"] for n in ("weight", "bias") if f"{path}.{n}" in originals}


def _norm_paths(target) -> dict[str, str]:
    """block_out path -> the path of the post-norm over it, where the layout names one."""
    out = {}
    names = target.layout.slot_names()
    for block_slot, norm_slot in _NORM_OF.items():
        if block_slot not in names or norm_slot not in names:
            continue
        norms = {(s.stack, s.layer): s.path for s in target.sites(norm_slot)}
        for site in target.sites(block_slot):
            if (site.stack, site.layer) in norms:
                out[site.path] = norms[(site.stack, site.layer)]
    return out


def _start_from_pretrained(target, head_from) -> None:
    """Base tensors the members trained in place start the mixer at their pretrained values, as in
    nlprunners, which keeps only each source's adapter and sublayer norms (multi_adapter_modeling.py:
    733-752): the task head starts fresh (or from the member `head_from`), the embeddings' norm pretrained.
    The values they had come back when the mixer is detached."""
    heads = tuple(f"{h}." for h in target.layout.heads)
    params = target.base_parameters()
    for name, original in list(target.controller.originals.items()):
        value = original
        if head_from is not None and name.startswith(heads):
            value = target.controller.adapters[head_from].loaded_base.get(name, original)
        param, before = params[name], params[name].detach().clone()
        with torch.no_grad():
            param.copy_(value)
        target.journal.record(lambda p=param, v=before: p.data.copy_(v))


def build_weighted_sum(target, *, adapters, mode, num_weight_sets, include_base, flex, flex_size,
                       flex_reduction_factor, train_mode, head_from, sources, compat):
    sites = member_sites(target, adapters)
    ordinals, total = _ordinals(target)
    n_sets = _set_count(num_weight_sets, total)
    labels = (["base"] if include_base else []) + list(adapters)
    sets = WeightSets(_initial_weights(mode, n_sets, len(labels)), mode).to(**target.placement())
    target.home().weight_sets = sets
    norm_paths = _norm_paths(target)
    for site in sites:
        index = ordinals.get((site.stack, site.layer), 0) * n_sets // max(total, 1)
        series = f"{target.name}/{site.stack}.{site.layer}" if site.layer is not None else f"{target.name}/{site.path}"
        norm_path = norm_paths.get(site.path)
        net = _flex_net(target, norm_path or site.path, flex_size, flex_reduction_factor, train_mode) if flex else None
        if norm_path is None:
            target.place(site, WeightedMix(sets, index, labels, series, net, include_base=include_base))
            continue
        _place_norm_mix(target, site, norm_path, (sets, index, labels, series, net), adapters, include_base,
                        train_mode, compat)
    if train_mode in ("base_ft", "full_ft"):   # base_ft keeps the pretrained per-layer norms frozen (:772-776)
        kept = set() if train_mode == "full_ft" else {f"{p}.{n}" for p in norm_paths.values() for n in ("weight", "bias")}
        target.claim([n for n in target.base_parameters() if n not in kept])
    _start_from_pretrained(target, head_from)


def _place_norm_mix(target, site, norm_path, mixer_args, adapters, include_base, train_mode, compat) -> None:
    train_norms = train_mode == "full_ft"
    norms = [_norm_copy(target, norm_path, _member_norm_values(target, k, norm_path), train_norms) for k in adapters]
    base_norm = _norm_copy(target, norm_path, _pretrained_norm_values(target, norm_path), train_norms)
    deltas = Handoff(f"WeightedSum: the norm at {norm_path} ran without its sublayer's output")
    inputs = Handoff(f"WeightedSum: the norm at {norm_path} ran without its input")
    target.place(site, DeltaHandoff(deltas))
    norm_site = Site(site.stack, site.layer, "mix", norm_path)
    target.place(norm_site, HandoffTap(inputs))
    target.place(norm_site, NormMix(*mixer_args, norms=norms, base_norm=base_norm, include_base=include_base,
                                    pooled=compat == "nlprunners", deltas=deltas, inputs=inputs))


register_method("weighted_sum", WeightedSumConfig, build_weighted_sum, aliases=("multi_adapter",),
                example=lambda model, tmp: None)
