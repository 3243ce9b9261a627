"""AdapterFusion (Pfeiffer et al.): per module, attention of the module's output (query) over the member
adapters' outputs (keys, values); only the fusion trains. Attach it explicitly, then activate its block:

    pl.attach(model, pl.Fuse("rte", "mrpc"))            # the adapter "fuse_rte_mrpc"
    pl.activate(model, pl.Fuse("rte", "mrpc"))

`sources` (member -> saved adapter dir) are loaded, frozen, by `pl.attach` / `pl.load` when absent.

`compat="adapterhub"` computes AdapterHub's AdapterFusion instead (fusion_adapterhub.py): its options
`query`, `key`, `value`, `query_before_ln`, `residual_before`, `value_before_softmax`, `value_initialized`,
`regularization` and `dropout` (AdapterHub's `dropout_prob`) keep AdapterHub's names and meanings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import observe
from ..config import MethodConfig, check
from ..errors import PeftlabError
from ..registry import register_method
from ..runtime import Part
from .bottleneck import Bottleneck
from .fusion_adapterhub import AdapterHubFusionPart
from .mixing import member_sites


@dataclass
class FusionConfig(MethodConfig):
    adapters: tuple[str, ...] = ()
    temperature: float = 1.0
    sources: dict[str, str] = field(default_factory=dict)   # member -> saved adapter dir, loaded if absent
    # AdapterHub's AdapterFusionConfig ("dynamic" defaults), with compat="adapterhub" only: which of Q, K, V
    # exist (V without bias, over the members' up-projections), the query read before the model's norm, the
    # residual added to the values (and keys) first, V after the softmax, V starting near the identity, the
    # regularization loss on V, dropout on the scores (None: the model's attention_probs_dropout_prob, as
    # AdapterHub falls back to it)
    query: bool = True
    key: bool = True
    value: bool = True
    query_before_ln: bool = False
    residual_before: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    regularization: bool = True
    dropout: float | None = None
    compat_choices = ("adapterhub",)

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
        if self.compat == "adapterhub":
            check(self.query or self.key or self.value, "FusionConfig: AdapterHub's fusion without query, key "
                                                        "and value (a bare `dense` it never calls) is not supported")
            check(self.dropout is None or 0.0 <= self.dropout < 1.0,
                  f"FusionConfig.dropout must be in [0, 1), got {self.dropout}")
            return
        for key in AH_OPTIONS:
            check(getattr(self, key) == AH_DEFAULTS[key], f"FusionConfig.{key}={getattr(self, key)!r} is "
                                                          f"AdapterHub's option: set compat='adapterhub'")


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

def build_fusion(target, *, adapters, temperature, sources, compat=None, dropout=None, **options):
    sites = member_sites(target, adapters)
    options.pop("regularization")   # a flag AdapterHub saves and never reads: fusion_regularization_loss
    if compat == "adapterhub":
        _check_adapterhub_members(target, adapters)
        if dropout is None:   # AdapterHub: `dropout_prob or config.attention_probs_dropout_prob` (bottleneck.py:125)
            dropout = float(getattr(target.model.config, "attention_probs_dropout_prob", 0.0) or 0.0)
    for site in sites:
        series = f"{target.name}/{site.path}"
        width = target.width(site.path)
        if compat == "adapterhub":
            part = AdapterHubFusionPart(width, adapters, series, temperature=temperature, dropout=dropout, **options)
        else:
            part = FusionPart(width, adapters, series, temperature)
        target.place(site, part)


def _check_adapterhub_members(target, adapters) -> None:
    """AdapterHub fuses its bottleneck adapters only (LoRA layers raise NotImplementedError in compose_fuse,
    adapter_layer_base.py:401-409); peftlab's compat fusion reads AdapterHub's sequential ones."""
    for name in adapters:
        config = target.controller.adapters[name].config
        if not (isinstance(config, Bottleneck) and config.compat == "adapterhub" and not config.parallel):
            raise PeftlabError(f"FusionConfig(compat='adapterhub') fuses AdapterHub's sequential bottleneck adapters "
                               f"(pl.SeqBn, pl.DoubleSeqBn, Bottleneck(compat='adapterhub')); '{name}' is a "
                               f"{type(config).__name__}{' (parallel)' if getattr(config, 'parallel', False) else ''}")


AH_OPTIONS = ("query", "key", "value", "query_before_ln", "residual_before", "value_before_softmax",
              "value_initialized", "regularization", "dropout")
AH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FusionConfig) if f.name in AH_OPTIONS}

register_method("fusion", FusionConfig, build_fusion, aliases=("adapter_fusion",), example=lambda model, tmp: None)
