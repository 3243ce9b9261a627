"""BitFit (Ben Zaken et al.): train bias terms only.

Existing biases train in place. Where a projection or a per-layer norm has no bias (T5, Llama), a zero
bias is created: on q, k, v, o (self and cross attention), the FFN's in and out projections, and an
additive beta in every layer norm except each stack's final one (Compacter's choice).
The lm_head gets a zero bias too, and trains as the Compacter code trains it (`utils/utils.py:115-130`):
its weight as well (for a tied head: the shared embedding) unless `freeze_bitfit_lm_head`, which keeps
the weight frozen and trains only the bias (what the Compacter paper's BitFit row counts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import MethodConfig
from ..errors import PeftlabError
from ..registry import register_method
from ..runtime import Part
from ..targeting import Site, feature_dims

_PROJECTIONS = tuple(f"{a}.{p}" for a in ("attn", "cross_attn") for p in "qkvo") + ("attn.qkv", "ffn.in", "ffn.out")


@dataclass
class BitFit(MethodConfig):
    freeze_bitfit_lm_head: bool = False

    @property
    def identity_at_init(self) -> bool:
        return True


class BiasPart(Part):
    role = "add"

    def __init__(self, dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.bias.to(x.dtype)


def _bias_less_sites(target) -> list[tuple[Site, int]]:
    found, seen = [], set()
    for slot in _PROJECTIONS + ("norms",):
        if slot not in target.layout.slot_names():
            continue
        try:
            sites = target.sites(slot)
        except PeftlabError:   # e.g. cross attention on an encoder-only model
            continue
        for site in sites:
            module = target.module(site.path)
            if site.path in seen or getattr(module, "bias", None) is not None:
                continue
            seen.add(site.path)
            dims = feature_dims(module)
            found.append((site, dims[1] if dims else module.weight.shape[0]))
    return found


def build_bitfit(target, *, freeze_bitfit_lm_head):
    excluded = tuple(f"{p}." for p in (*target.layout.heads, target.layout.lm_head) if p)
    existing = [n for n in target.base_parameters() if n.endswith(".bias") and not n.startswith(excluded)]
    target.claim(existing)
    for site, dim in _bias_less_sites(target):
        target.place(site, BiasPart(dim))
    head = target.layout.lm_head
    if head and target.exists(head):
        module = target.module(head)
        if module.bias is not None:
            target.claim([f"{head}.bias"])
        else:
            target.place(Site(None, None, "lm_head", head), BiasPart(module.out_features))
        if not freeze_bitfit_lm_head:
            target.claim([f"{head}.weight"])


register_method("bitfit", BitFit, build_bitfit)
