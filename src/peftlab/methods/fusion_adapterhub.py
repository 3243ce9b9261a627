"""AdapterFusion as AdapterHub `adapters` 1.3 computes it (`FusionConfig(compat="adapterhub")`).

Read from its `methods/bottleneck.py` (`compose_fuse`, :254-303) and `methods/modeling.py` (`BertFusion`,
:359-456). At a sublayer with output h where the fused adapters (AdapterHub's sequential bottlenecks) sit:

- the **last** fused adapter's own input step gives z (LN(h + x) or h + x with `original_ln_before`), its
  residual r, and the query: z, or h with `query_before_ln` (modeling.py:157-208);
- each adapter i gives u_i = s_i · up_i(f(down_i(z))), its up-projection *before* its dropout, output norm
  and residual (modeling.py:210-216; bottleneck.py:248);
- scores_i = Q(query) · K(u_i), dropout on the scores themselves, p = softmax(scores / T);
  out = Σ_i p_i V(u_i) + r, V a d×d map without bias (modeling.py:392, 420-450). With
  `residual_before`, r is added to every u_i first, and since AdapterHub adds it in place to the one tensor
  that is both its keys and its values, the keys see it too (modeling.py:413-414);
- the model then adds its residual (and normalizes), as after a single adapter.

Where peftlab's own fusion differs (V with a bias over the members' whole outputs, no dropout, no
regularization): docs/fidelity.md, the AdapterHub rows.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import observe
from ..runtime import Part
from .bottleneck_adapterhub import SerialAdapterHub

BERT_STD = 0.02          # modeling.py:264-275 (`init_bert_weights`), applied to Q, K and V
REGULARIZATION = 0.01    # model_mixin.py:1455-1470: 0.01 · ||I - V||² per fusion layer


def adapter_input(part: SerialAdapterHub, h: torch.Tensor):
    """(z, residual) of one AdapterHub sequential adapter at output h: its `pre_forward` (modeling.py:157-208),
    taking the residual stream its tap handed over."""
    dtype = part.net.dtype
    x = part.inputs.take() if part.inputs is not None else None
    h_ = h.to(dtype)
    z, residual = h_, h_
    if part.original_ln_before:
        total = h_ + x.to(dtype)
        residual = total if part.residual_before_ln == "post_add" else h_
        z = part.norm(total).to(dtype) if part.norm is not None else total
    if part.residual_before_ln is False:
        residual = z
    return z, residual


def scaled_up(part: SerialAdapterHub, z: torch.Tensor) -> torch.Tensor:
    """s · up(f(down(ln_before(z)))): what AdapterHub hands its fusion layer (the `up` of modeling.py:210-216)."""
    net = part.net
    if net.ln_before is not None:
        z = net.ln_before(z)
    up = net.up(net.act(net.down(z)))
    return up * (net.scale if net.scale is not None else net.fixed_scale)


class AdapterHubFusionPart(Part):
    """AdapterHub's `BertFusion` at one sublayer; the evaluator hands it the members' parts (`mix_parts`)."""

    role = "mix"

    def __init__(self, d: int, labels, series: str, *, query: bool, key: bool, value: bool, query_before_ln: bool,
                 residual_before: bool, value_before_softmax: bool, value_initialized: bool, temperature: float,
                 dropout: float):
        super().__init__()
        self.query = nn.Linear(d, d) if query else None
        self.key = nn.Linear(d, d) if key else None
        self.value = nn.Linear(d, d, bias=False) if value else None
        for linear in (self.query, self.key, self.value):
            if linear is not None:
                nn.init.normal_(linear.weight, std=BERT_STD)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        if self.value is not None and value_initialized:   # modeling.py:394-405: identity, 1e-6 elsewhere
            with torch.no_grad():
                self.value.weight.fill_(1e-6).fill_diagonal_(1.0)
        self.dropout = nn.Dropout(dropout)
        self.labels, self.series, self.temperature = list(labels), series, temperature
        self.query_before_ln, self.residual_before = query_before_ln, residual_before
        self.value_before_softmax = value_before_softmax

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def mix_parts(self, h: torch.Tensor, members: list[tuple[str, SerialAdapterHub]]) -> torch.Tensor:
        """The fused output at this sublayer from the members present here (name, part), in block order."""
        prepared = [adapter_input(part, h) for _, part in members]   # every tap's tensor is taken
        z, residual = prepared[-1]                  # the last member's input step serves all (bottleneck.py:260-270)
        dtype = self.dtype
        query = (h if self.query_before_ln else z).to(dtype)
        ups = torch.stack([scaled_up(part, z).to(dtype) for _, part in members], dim=-2)   # (..., n, d)
        residual = residual.to(dtype)
        if self.residual_before:
            ups = ups + residual.unsqueeze(-2)
        q = self.query(query) if self.query is not None else query
        k = self.key(ups) if self.key is not None else ups
        v = self.value(ups) if self.value is not None and self.value_before_softmax else ups
        # (..., 1, d) @ (..., d, n) and (..., 1, n) @ (..., n, d): AdapterHub's products, in its order of rounding
        scores = self.dropout(torch.matmul(q.unsqueeze(-2), k.transpose(-2, -1)).squeeze(-2))
        probs = torch.softmax(scores / self.temperature, dim=-1)
        observe.record(self.series, [name for name, _ in members], probs.reshape(-1, len(members)).mean(0))
        out = torch.matmul(probs.unsqueeze(-2), v).squeeze(-2)
        if self.value is not None and not self.value_before_softmax:
            out = self.value(out)
        if not self.residual_before:
            out = out + residual
        return out.to(h.dtype)

    def regularization(self) -> torch.Tensor | None:
        """0.01 · ||I - V||² when V exists and trains (AdapterHub's `get_fusion_regularization_loss`)."""
        if self.value is None or not self.value.weight.requires_grad:
            return None
        eye = torch.eye(self.value.weight.shape[0], device=self.value.weight.device, dtype=self.value.weight.dtype)
        return REGULARIZATION * (eye - self.value.weight).pow(2).sum()
