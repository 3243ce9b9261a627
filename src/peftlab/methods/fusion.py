"""AdapterFusion (Pfeiffer et al.): per module, attention of the module's output (query) over the member
adapters' outputs (keys, values); only the fusion trains. Attach it explicitly, then activate its block:

    pl.attach(model, pl.Fuse("rte", "mrpc"))            # the adapter "fuse_rte_mrpc"
    pl.activate(model, pl.Fuse("rte", "mrpc"))

`sources` (member -> saved adapter dir) are loaded, frozen, by `pl.attach` / `pl.load` when absent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .. import observe
from ..config import MethodConfig, check
from ..registry import register_method
from ..runtime import Part
from .mixing import member_sites


@dataclass
class FusionConfig(MethodConfig):
    adapters: tuple[str, ...] = ()
    temperature: float = 1.0
    sources: dict[str, str] = field(default_factory=dict)   # member -> saved adapter dir, loaded if absent

    def frozen_members(self):
        return self.adapters

    def mixed_members(self):
        return self.adapters

    def member_sources(self):
        return dict(self.sources)

    def validate(self):
        check(len(self.adapters) >= 1, "FusionConfig.adapters must name at least one adapter")
        unknown = [k for k in self.sources if k not in self.adapters]
        check(not unknown, f"Fuse sources: '{unknown[0] if unknown else ''}' is not one of the adapters")
        check(self.temperature > 0, f"FusionConfig.temperature must be positive, got {self.temperature}")


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


# --- builder ---------------------------------------------------------------------------------------

def build_fusion(target, *, adapters, temperature, sources):
    for site in member_sites(target, adapters):
        series = f"{target.name}/{site.path}"
        target.place(site, FusionPart(target.width(site.path), adapters, series, temperature))


register_method("fusion", FusionConfig, build_fusion, aliases=("adapter_fusion",), example=lambda model, tmp: None)
