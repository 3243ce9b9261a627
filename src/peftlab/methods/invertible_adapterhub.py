"""AdapterHub's invertible adapters (adapters 1.3: `inv_adapter` of a bottleneck config, `SeqBnInvConfig`,
`DoubleSeqBnInvConfig`), placed and initialized as AdapterHub does.

The coupling (methods/modeling.py:462-584) acts on the output of the model's embeddings, split in halves
x = [x1, x2] (widths d1 = d // 2, d2 = d - d1), with subnets Linear -> f -> Linear of hidden width
int(d_in // inv_adapter_reduction_factor) and the adapter's non-linearity f:

    NICE:  y1 = x1 + F(x2),  y2 = x2 + G(y1)
    GLOW:  [s2, t2] = s2(x2), y1 = e(s2) ⊙ x1 + t2;  [s1, t1] = s1(y1), y2 = e(s1) ⊙ x2 + t1,
           e(s) = exp(clamp · 0.636 · atan(s / clamp)), clamp 5 (FrEIA's GLOW coupling)

Every Linear starts N(0, 0.02²) with a zero bias (`init_bert_weights`, invertible.py:46). Where
(its models' mixins): the output of the embeddings module (BERT, RoBERTa: after its LayerNorm and
dropout), of GPT-2's embedding dropout, of Llama's token embeddings, of BART's encoder
`layernorm_embedding` (before its dropout) and of T5's encoder embedding dropout — the encoder only on
T5 and BART. AdapterHub's model classes with a static head (BertForSequenceClassification,
GPT2LMHeadModel, ...) never apply the inverse; only its flexible LM heads do (heads/language_modeling.py:
109-111), which peftlab does not read. docs/fidelity.md H14-H16.

AdapterHub's own GLOW forward fails on every text model (it slices the sequence axis, not the features:
modeling.py:552-570), so no AdapterHub run computes it; peftlab's is the coupling that code was written to
be, with AdapterHub's tensor names and shapes, exactly inverted by `inverse`.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import check
from ..runtime import Part, named_base_modules
from ..targeting import Site

BERT_STD = 0.02
GLOW_CLAMP = 5.0


def _subnet(d_in: int, d_out: int, reduction_factor: float, non_linearity: str) -> nn.Sequential:
    hidden = int(d_in // reduction_factor)
    check(hidden >= 1, f"inv_adapter_reduction_factor {reduction_factor} leaves no width in the invertible "
                       f"adapter's subnet (half-embedding of {d_in})")
    net = nn.Sequential(nn.Linear(d_in, hidden), ACT2FN[non_linearity.lower()], nn.Linear(hidden, d_out))
    for layer in (net[0], net[2]):
        nn.init.normal_(layer.weight, std=BERT_STD)
        nn.init.zeros_(layer.bias)
    return net


class AdapterHubNice(nn.Module):
    """NICE additive coupling with AdapterHub's tensor names (F.0, F.2, G.0, G.2)."""

    def __init__(self, d: int, reduction_factor: float, non_linearity: str):
        super().__init__()
        self.d1 = d // 2
        self.F = _subnet(d - self.d1, self.d1, reduction_factor, non_linearity)
        self.G = _subnet(self.d1, d - self.d1, reduction_factor, non_linearity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., :self.d1], x[..., self.d1:]
        y1 = x1 + self.F(x2)
        return torch.cat([y1, x2 + self.G(y1)], dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., :self.d1], y[..., self.d1:]
        x2 = y2 - self.G(y1)
        return torch.cat([y1 - self.F(x2), x2], dim=-1)


class AdapterHubGlow(nn.Module):
    """GLOW affine coupling with AdapterHub's tensor names (s1.0, s1.2, s2.0, s2.2) and soft clamp."""

    def __init__(self, d: int, reduction_factor: float, non_linearity: str):
        super().__init__()
        self.d1 = d // 2
        d2 = d - self.d1
        self.s1 = _subnet(self.d1, 2 * d2, reduction_factor, non_linearity)
        self.s2 = _subnet(d2, 2 * self.d1, reduction_factor, non_linearity)

    @staticmethod
    def _e(s: torch.Tensor) -> torch.Tensor:
        # 0.636 ≈ 2/π: |log e(s)| stays below the clamp (modeling.py:546-550)
        return torch.exp(GLOW_CLAMP * 0.636 * torch.atan(s / GLOW_CLAMP))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., :self.d1], x[..., self.d1:]
        scale2, shift2 = self.s2(x2).split([self.d1, self.d1], dim=-1)
        y1 = self._e(scale2) * x1 + shift2
        scale1, shift1 = self.s1(y1).split([x2.shape[-1]] * 2, dim=-1)
        return torch.cat([y1, self._e(scale1) * x2 + shift1], dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., :self.d1], y[..., self.d1:]
        scale1, shift1 = self.s1(y1).split([y2.shape[-1]] * 2, dim=-1)
        x2 = (y2 - shift1) / self._e(scale1)
        scale2, shift2 = self.s2(x2).split([self.d1, self.d1], dim=-1)
        return torch.cat([(y1 - shift2) / self._e(scale2), x2], dim=-1)


COUPLINGS = {"nice": AdapterHubNice, "glow": AdapterHubGlow}


class InvertibleForward(Part):
    """The coupling on the embeddings' output (role "output"), or on the input of T5's first encoder
    block, which is that output after T5's embedding dropout (role "input")."""

    def __init__(self, coupling: nn.Module, role: str):
        super().__init__()
        self.coupling, self.role = coupling, role

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = next(self.coupling.parameters()).dtype
        return self.coupling(h.to(dtype)).to(h.dtype)


# where AdapterHub's mixins hook the invertible adapter: layout -> (module path suffix, role)
PLACES = {"gpt2": ("drop", "output"), "llama": ("embed_tokens", "output"),
          "bart": ("encoder.layernorm_embedding", "output"), "t5": ("encoder.block.0", "input")}


def _place(target) -> tuple[str, str]:
    name = target.layout.name
    modules = [path for path, _ in named_base_modules(target.model)]
    if name == "bert":   # the embeddings module: the parent of the word embeddings
        word = [p for p in modules if p.endswith(target.layout.embeddings[0])]
        check(bool(word), "AdapterHub invertible adapter: no word embeddings found")
        return word[0].rsplit(".", 1)[0], "output"
    check(name in PLACES, f"AdapterHub's invertible adapters are placed on BERT, RoBERTa, GPT-2, T5, BART and "
                          f"Llama models here; not on {name} (use pl.InvertibleAdapter)")
    suffix, role = PLACES[name]
    found = [p for p in modules if p == suffix or p.endswith("." + suffix)]
    check(len(found) == 1, f"AdapterHub invertible adapter: expected one '{suffix}' module, found {len(found)}")
    return found[0], role


def build_adapterhub_invertible(target, kind: str, reduction_factor: float, non_linearity: str) -> None:
    """Put AdapterHub's coupling (`kind` "nice" or "glow") where AdapterHub's mixin for this model does."""
    path, role = _place(target)
    coupling = COUPLINGS[kind](target.hidden_size, reduction_factor, non_linearity)
    target.place(Site(None, None, "embeddings", path), InvertibleForward(coupling, role))
    target.note("invertible adapter", path)


def invertible_part(attachment) -> InvertibleForward | None:
    return next((part for _, part in attachment.parts if isinstance(part, InvertibleForward)), None)

