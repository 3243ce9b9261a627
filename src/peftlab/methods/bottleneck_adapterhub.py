"""AdapterHub's bottleneck adapters, as `adapters` 1.3 computes them (`compat="adapterhub"`).

Read from its `methods/modeling.py` (`Adapter`, `ParallelAdapter`) and `methods/bottleneck.py`
(`bottleneck_layer_forward`), with each model's call of it (`models/<arch>/modeling_<arch>.py`). Around
a sublayer with output h and residual stream x (the sublayer's input on post-norm models, the input of
the norm in front of it on pre-norm ones), the model itself then computing LN(out + x) (post-norm) or
out + x (pre-norm):

- serial: z = h, or with `original_ln_before` z = LN(h + x) on post-norm models, h + x on pre-norm ones
  (modeling.py:183-200); the residual r is h (`residual_before_ln=True`), h + x ("post_add") or z
  (False) (:177-203); out = r + ln_after(dropout(s · up(f(down(ln_before(z)))))), or with
  `adapter_residual_before_ln` ln_after(... + r) (:210-235);
- parallel: out = h + ln_after(dropout(s · up(f(down(ln_before(x)))))) (:303-307, 309-345): the branch
  reads the residual stream x, not the normed sublayer input.

Where peftlab's own bottleneck differs (the LayerNorm a residual is taken before, scale then LN, the
parallel input): docs/fidelity.md, rows H1-H5.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import check
from ..ops import net_dtype
from ..runtime import Handoff, HandoffTap, Part
from ..targeting import LayerSelection, Site

BERT_STD = 0.02          # modeling.py:265-274, `init_bert_weights`


class AdapterHubNet(nn.Module):
    """down -> f -> up, times the scaling, dropout; optional input and output LayerNorms of the adapter."""

    def __init__(self, d: int, k: int, non_linearity: str, ln_before: bool, ln_after: bool, scaling, init: str,
                 init_std: float | None, dropout: float, adapter_residual_before_ln: bool, linear=None):
        super().__init__()
        self.ln_before = nn.LayerNorm(d) if ln_before else None
        if linear is not None:   # PHM projections (Compacter), which initialize themselves
            self.down, self.up = linear(d, k, "down"), linear(k, d, "up")
        else:
            self.down, self.up = nn.Linear(d, k), nn.Linear(k, d)
        self.act = ACT2FN[non_linearity]
        self.ln_after = nn.LayerNorm(d) if ln_after else None
        self.scale = nn.Parameter(torch.ones(1)) if scaling == "learned" else None
        self.fixed_scale = 1.0 if scaling == "learned" else float(scaling)
        self.dropout = nn.Dropout(dropout)
        self.adapter_residual_before_ln = adapter_residual_before_ln
        if linear is not None:   # AdapterHub's "bert" init reaches nn.Linear layers only (modeling.py:122-125)
            pass
        elif init == "zero_up":    # AdapterHub's "mam_adapter" (modeling.py:128-135)
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:                    # "bert" (and peftlab's near_identity): normal weights, zero biases
            std = init_std or (BERT_STD if init == "bert" else 0.01)
            for layer in (self.down, self.up):
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)

    @property
    def dtype(self) -> torch.dtype:
        return net_dtype(self)

    def branch(self, z: torch.Tensor) -> torch.Tensor:
        """dropout(s · up(f(down(ln_before(z))))): the scale comes before any output LayerNorm here."""
        if self.ln_before is not None:
            z = self.ln_before(z)
        up = self.up(self.act(self.down(z)))
        return self.dropout(up * (self.scale if self.scale is not None else self.fixed_scale))

    def serial(self, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out = self.branch(z)
        if self.adapter_residual_before_ln:
            out = out + residual
        if self.ln_after is not None:
            out = self.ln_after(out)
        return out if self.adapter_residual_before_ln else out + residual

    def parallel(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return self.ln_after(out) if self.ln_after is not None else out


class SerialAdapterHub(Part):
    """At a sublayer's output h: AdapterHub's sequential adapter, before the model's residual add (and norm)."""

    role = "output"

    def __init__(self, net: AdapterHubNet, location: str, original_ln_before: bool, residual_before_ln,
                 inputs: Handoff | None, norm: nn.Module | None):
        super().__init__()
        self.net, self.location, self.inputs = net, location, inputs
        self.original_ln_before, self.residual_before_ln = original_ln_before, residual_before_ln
        self.__dict__["norm"] = norm   # the model's own LayerNorm (post-norm models): the model owns it

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.inputs.take() if self.inputs is not None else None
        h_ = h.to(self.net.dtype)
        z, residual = h_, h_
        if self.original_ln_before:
            total = h_ + x.to(self.net.dtype)
            residual = total if self.residual_before_ln == "post_add" else h_
            z = self.norm(total).to(self.net.dtype) if self.norm is not None else total
        if self.residual_before_ln is False:
            residual = z
        return self.net.serial(z, residual).to(h.dtype)


class ParallelAdapterHub(Part):
    """Adds AdapterHub's parallel branch, computed from the residual stream a tap handed over, to the
    sublayer's output."""

    role = "add"

    def __init__(self, net: AdapterHubNet, location: str, inputs: Handoff):
        super().__init__()
        self.net, self.location, self.inputs = net, location, inputs

    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        x = self.inputs.take()
        return self.net.parallel(x.to(self.net.dtype)).to(x.dtype)


def _per_layer(sites: list[Site]) -> dict:
    out = {}
    for site in sites:
        out.setdefault((site.stack, site.layer), site)
    return out


def _add_norms(target, location: str, selection) -> dict:
    """(stack, layer) -> the model's LayerNorm over sublayer output + residual (post-norm layouts only)."""
    slot = f"{location}_add_norm"
    if slot not in target.layout.slot_names():
        return {}
    return {key: target.module(site.path) for key, site in _per_layer(target.sites(slot, selection)).items()}


def build_adapterhub_bottleneck(target, selection: LayerSelection, *, bottleneck_size, reduction_factor,
                                non_linearity, mh_adapter, output_adapter, parallel, residual_before_ln,
                                original_ln_before, ln_before, ln_after, adapter_residual_before_ln, scaling,
                                init, init_std, dropout, linear=None):
    """Place AdapterHub's adapter at each selected layer's attention ("mh_adapter") and FFN ("output_adapter")."""
    for on, location in ((mh_adapter, "attn"), (output_adapter, "ffn")):
        if not on:
            continue
        reads_stream = parallel or original_ln_before
        taps = _per_layer(target.sites(f"{location}_residual", selection)) if reads_stream else {}
        norms = _add_norms(target, location, selection) if original_ln_before and not parallel else {}
        check(residual_before_ln != "post_add" or norms,
              "residual_before_ln='post_add' needs a post-norm model (BERT, RoBERTa, BART): on pre-norm "
              "models AdapterHub never sets that residual")
        for site in target.sites(f"{location}_block_out", selection):
            d = target.width(site.path)
            # AdapterHub: int(hidden // reduction_factor), raised to 1 when smaller (modeling.py:68-75)
            k = bottleneck_size or max(1, int(d // reduction_factor))
            net = AdapterHubNet(d, k, non_linearity, ln_before, ln_after, scaling, init, init_std, dropout,
                                adapter_residual_before_ln, linear)
            inputs = Handoff(f"AdapterHub adapter at {site.path}: the residual stream was not seen first")
            if reads_stream:
                target.place(taps[(site.stack, site.layer)], HandoffTap(inputs))
            if parallel:
                target.place(site, ParallelAdapterHub(net, location, inputs))
            else:
                part = SerialAdapterHub(net, location, original_ln_before, residual_before_ln,
                                        inputs if reads_stream else None, norms.get((site.stack, site.layer)))
                target.place(site, part)
