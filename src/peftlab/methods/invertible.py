"""Invertible adapter (MAD-X, Pfeiffer et al. 2020): a NICE additive coupling on the token embeddings.

With the embedding split in halves e = [e1, e2] (widths d1 = d // 2 and d2 = d - d1):

    forward:  o1 = e1 + F(e2)        inverse:  e2 = o2 - G(o1)
              o2 = e2 + G(o1)                  e1 = o1 - F(e2)

F: d2 -> d1 and G: d1 -> d2 are small bottleneck MLPs (down -> f -> up, hidden = half width //
reduction_factor). The forward runs on the output of every token-embedding module; where the output
projection shares the embedding matrix (tied), the inverse runs on its input, so that the language
adapter maps into and out of the shared vocabulary space. `adapter` places a bottleneck adapter under
the same name: `InvertibleAdapter(adapter=Pfeiffer(reduction_factor=2))` is one MAD-X language adapter,
used as `pl.Stack("lang_xx", "task")`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import MethodConfig, check
from ..registry import register_method
from ..runtime import Part
from ..targeting import Site
from .bottleneck import Bottleneck, Houlsby, NonLinearity, Parallel, Pfeiffer, build_bottleneck


@dataclass
class InvertibleAdapter(MethodConfig):
    reduction_factor: float = 2.0
    non_linearity: NonLinearity = "relu"
    init: Literal["near_identity", "zero_up"] = "zero_up"
    inverse_at_output: bool | None = None       # None: wherever the output projection is tied to the embeddings
    # The language adapter's bottleneck, placed under the same name. The presets are listed so that a
    # saved {"method": "pfeiffer", ...} comes back as a Pfeiffer config.
    adapter: Bottleneck | Pfeiffer | Houlsby | Parallel | None = None

    def validate(self):
        check(self.reduction_factor > 0, f"InvertibleAdapter.reduction_factor must be positive, "
                                         f"got {self.reduction_factor}")

    @property
    def identity_at_init(self) -> bool:
        return self.init == "zero_up" and (self.adapter is None or self.adapter.identity_at_init)


class _Mlp(nn.Module):
    def __init__(self, d_in: int, d_out: int, reduction_factor: float, non_linearity: str, init: str):
        super().__init__()
        hidden = max(1, int(d_in // reduction_factor))
        check(hidden <= 16 * d_in, f"InvertibleAdapter.reduction_factor {reduction_factor} gives a coupling "
                                   f"width of {hidden} for a half-embedding of {d_in}")
        self.down, self.act, self.up = nn.Linear(d_in, hidden), ACT2FN[non_linearity], nn.Linear(hidden, d_out)
        if init == "zero_up":   # the coupling starts as the identity, both ways
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.down.weight, std=1e-2)
            nn.init.normal_(self.up.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(self.act(self.down(x)))


class NiceCoupling(nn.Module):
    """The invertible map; `forward` and `inverse` are exact inverses up to float rounding."""

    def __init__(self, d: int, reduction_factor: float, non_linearity: str, init: str):
        super().__init__()
        self.d1 = d // 2
        d2 = d - self.d1
        self.F = _Mlp(d2, self.d1, reduction_factor, non_linearity, init)
        self.G = _Mlp(self.d1, d2, reduction_factor, non_linearity, init)

    def forward(self, e):
        e1, e2 = e[..., :self.d1], e[..., self.d1:]
        o1 = e1 + self.F(e2)
        return torch.cat([o1, e2 + self.G(o1)], dim=-1)

    def inverse(self, o):
        o1, o2 = o[..., :self.d1], o[..., self.d1:]
        e2 = o2 - self.G(o1)
        return torch.cat([o1 - self.F(e2), e2], dim=-1)


class CouplingForward(Part):
    """On a token-embedding module's output. The first one placed owns the coupling's weights."""

    role = "output"

    def __init__(self, coupling: NiceCoupling, owner: bool):
        super().__init__()
        if owner:
            self.coupling = coupling
        else:
            self.__dict__["shared"] = coupling   # same weights, registered (and saved) once

    def net(self) -> NiceCoupling:
        return self.coupling if "coupling" in self._modules else self.__dict__["shared"]

    def forward(self, h):
        net = self.net()
        dtype = net.F.down.weight.dtype
        return net(h.to(dtype)).to(h.dtype)


class CouplingInverse(Part):
    """On the tied output projection's input: maps hidden states back before the vocabulary logits."""

    role = "input"

    def __init__(self, coupling: NiceCoupling):
        super().__init__()
        self.__dict__["shared"] = coupling

    def forward(self, x):
        net = self.__dict__["shared"]
        return net.inverse(x.to(net.F.down.weight.dtype)).to(x.dtype)


def _embedding_sites(target) -> list[Site]:
    return target.pattern_sites(target.layout.embeddings, accept=lambda m: isinstance(m, nn.Embedding))


def _ties_output(target) -> bool:
    head = target.layout.lm_head
    if not head or not target.exists(head):
        return False
    embedding = target.model.get_input_embeddings()
    return target.module(head).weight is getattr(embedding, "weight", None)


def build_invertible(target, *, reduction_factor, non_linearity, init, inverse_at_output, adapter):
    sites = _embedding_sites(target)
    d = target.module(sites[0].path).embedding_dim
    coupling = NiceCoupling(d, reduction_factor, non_linearity, init)
    for index, site in enumerate(sites):
        target.place(site, CouplingForward(coupling, owner=index == 0))
    tied = _ties_output(target)
    if inverse_at_output or (inverse_at_output is None and tied):
        head = target.layout.lm_head
        check(bool(head) and target.exists(head), "InvertibleAdapter.inverse_at_output: this model has no lm_head")
        target.place(Site(None, None, "lm_head", head), CouplingInverse(coupling))
    if adapter is not None:
        build_bottleneck(target, **adapter.build_kwargs())


def _example(model, tmp_dir):
    return InvertibleAdapter(adapter=Bottleneck(init="zero_up", reduction_factor=2))


register_method("invertible", InvertibleAdapter, build_invertible, aliases=("invertible_adapter", "nice"),
                example=_example)
