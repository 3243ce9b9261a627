"""Kernel-structure methods (Chen et al., NAACL 2022 Findings): each attention head is a kernel smoother.

**KernelAdapter** learns the kernel's bandwidths: per layer, queries and keys are rescaled channel-wise
per head, q' = (q + b_q) * beta_q, k' = k * beta_k (beta init ones, b_q init zeros: exactly the identity
at init). Bandwidths are shared by the heads of a layer (`per_head=False`, the paper's default) or one
per head. They act on the projection outputs, i.e. before rotary embeddings on Llama, and before the
key/value cache, so cached generation sees the same keys.

**KernelMix** gives every head its own low-rank update plus one shared low-rank term per projection:
    dQ_h = s (B_h A_h x + b_h)               from the layer input x, rank r_q
    dV_h = s (B_h A_h k_h + b_h)             from the head's own key k_h, rank r_v
    dO   = s (B [A_1 a_1; ...; A_H a_H] + b) from each head's output a_h, rank r_o per head
plus s B A x of rank `shared_r_*` on each projection's own input; s = alpha / r per term (alpha=None:
s = 1, the paper's runs). Init N(0, 0.01^2) truncated at 2 sigma everywhere (`init="normal"`, the
paper's) or zero B's and biases (`init="zero"`: exactly the identity). On GPT-2's fused q/k/v Conv1D
both methods act on the slices of its output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import LayeredConfig, check
from ..errors import PeftlabError
from ..registry import register_method
from ..runtime import Handoff, HandoffTap, Part
from ..targeting import LayerSelection, feature_dims
from .head_geometry import Segment, attention_sites, head_counts, projection_segments, split_heads, truncated_normal_


# --- KernelAdapter ---------------------------------------------------------------------------------

@dataclass
class KernelAdapter(LayeredConfig):
    per_head: bool = False        # one bandwidth vector per head (else shared by a layer's heads)
    query_bias: bool = False      # q' = (q + b) * beta_q, b init zeros
    scale_keys: bool = True       # False: queries only (the paper's "Q only" variant)

    @property
    def identity_at_init(self) -> bool:
        return True

    @property
    def mergeable(self) -> bool:
        return not self.query_bias


class Bandwidth(nn.Module):
    """Scales one projection segment per head: (x + bias) * bandwidth."""

    def __init__(self, segment: Segment, per_head: bool, bias: bool):
        super().__init__()
        self.segment = segment
        shape = (segment.heads, segment.head_dim) if per_head else (segment.head_dim,)
        self.bandwidth = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.segment.take(h).to(self.bandwidth.dtype)
        if self.bias is not None:
            x = x + self.bias
        return self.segment.put(h, x * self.bandwidth)

    def full(self) -> torch.Tensor:
        return self.bandwidth.expand(self.segment.heads, self.segment.head_dim).reshape(-1)


class KernelScalePart(Part):
    """Rescales the query and/or key segments of one projection's output."""

    role = "output"

    def __init__(self, segments: dict[str, Segment], per_head: bool, query_bias: bool, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.scales = nn.ModuleDict({kind: Bandwidth(seg, per_head, query_bias and kind == "q")
                                     for kind, seg in segments.items()})

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for scale in self.scales.values():
            h = scale(h)
        return h

    def merge_scale(self):
        if any(scale.bias is not None for scale in self.scales.values()):
            raise PeftlabError("a KernelAdapter with query_bias=True has no weight-space form to merge")
        vector = torch.ones(self.out_features, device=next(self.parameters()).device)
        for scale in self.scales.values():
            start = scale.segment.start
            vector = torch.cat([vector[:start], scale.full(), vector[start + scale.segment.width:]])
        return vector, "out"


def build_kernel_adapter(target, *, per_head, query_bias, scale_keys, layers, encoder_layers, decoder_layers,
                         leave_out):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    kinds = "qk" if scale_keys else "q"
    for site in attention_sites(target, kinds, selection):
        segments = projection_segments(target, site, kinds, "KernelAdapter")
        out_features = feature_dims(target.module(site.path))[1]
        target.place(site, KernelScalePart(segments, per_head, query_bias, out_features))


# --- KernelMix -------------------------------------------------------------------------------------

@dataclass
class KernelMix(LayeredConfig):
    r_q: int = 3                  # head-specific rank of the query update
    r_v: int = 8                  # head-specific rank of the value update
    r_o: int = 8                  # head-specific rank of the output-projection update
    shared_r_q: int = 12          # rank of the shared query term (0: none)
    shared_r_v: int = 8           # rank of the shared value term (0: none)
    shared_r_o: int = 8           # rank of the shared output term (0: none)
    alpha: float | None = None    # each term is scaled by alpha / its rank; None: scale 1 (the paper)
    dropout: float = 0.1          # on each term's input, its own mask (kernel-mix.json:22, low_rank_layer.py:78-90)
    targets: tuple[Literal["q", "v", "o"], ...] = ("q", "v", "o")
    init: Literal["normal", "zero"] = "normal"

    def validate(self):
        for name in ("r_q", "r_v", "r_o"):
            check(getattr(self, name) > 0, f"KernelMix.{name} must be positive, got {getattr(self, name)}")
        for name in ("shared_r_q", "shared_r_v", "shared_r_o"):
            check(getattr(self, name) >= 0, f"KernelMix.{name} must be >= 0, got {getattr(self, name)}")
        check(self.alpha is None or self.alpha > 0, f"KernelMix.alpha must be positive, got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, f"KernelMix.dropout must be in [0, 1), got {self.dropout}")
        check(len(self.targets) > 0 and len(set(self.targets)) == len(self.targets),
              f"KernelMix.targets must name q, v and/or o once each, got {list(self.targets)}")

    @property
    def identity_at_init(self) -> bool:
        return self.init == "zero"


def _scale(alpha, rank: int) -> float:
    return 1.0 if alpha is None else alpha / rank


def _fill(init: str, *tensors: torch.Tensor) -> None:
    """The up-projections and biases: the paper's small normal init, or zeros (identity at init)."""
    for tensor in tensors:
        truncated_normal_(tensor) if init == "normal" else nn.init.zeros_(tensor)


class HeadLowRank(nn.Module):
    """Per head h: s (B_h A_h x_h + b_h). `x` is (..., in) when shared_input, else (..., heads, in)."""

    def __init__(self, heads: int, in_dim: int, out_dim: int, rank: int, scale: float, init: str):
        super().__init__()
        self.A = nn.Parameter(truncated_normal_(torch.empty(heads, rank, in_dim)))
        self.B = nn.Parameter(torch.empty(heads, out_dim, rank))
        self.b = nn.Parameter(torch.empty(heads, out_dim))
        _fill(init, self.B, self.b)
        self.scale = scale

    def forward(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        low = torch.einsum("...i,hri->...hr" if shared_input else "...hi,hri->...hr", x, self.A)
        return self.scale * (torch.einsum("...hr,hor->...ho", low, self.B) + self.b)


class SharedLowRank(nn.Module):
    """s B A x, with A: rank x in and B: out x rank."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, scale: float, init: str):
        super().__init__()
        self.A = nn.Parameter(truncated_normal_(torch.empty(rank, in_dim)))
        self.B = nn.Parameter(torch.empty(out_dim, rank))
        _fill(init, self.B)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.A.T @ self.B.T)


def _shared(d_in: int, d_out: int, rank: int, alpha, init: str) -> SharedLowRank | None:
    return SharedLowRank(d_in, d_out, rank, _scale(alpha, rank), init) if rank else None


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class QueryMix(Part):
    """dQ (flat, the query projection's width) from the layer input x."""

    role = "add"

    def __init__(self, segment: Segment, d_in: int, rank: int, shared_rank: int, alpha, init: str, dropout: float):
        super().__init__()
        self.head = HeadLowRank(segment.heads, d_in, segment.head_dim, rank, _scale(alpha, rank), init)
        self.shared, self.dropout = _shared(d_in, segment.width, shared_rank, alpha, init), _dropout(dropout)

    def forward(self, x):
        x_ = x.to(self.head.A.dtype)
        delta = self.head(self.dropout(x_), shared_input=True).flatten(-2)
        return (delta if self.shared is None else delta + self.shared(self.dropout(x_))).to(x.dtype)


class ValueMix(Part):
    """dV of each key/value head from that head's key, which a `HandoffTap` on the layer's key projection hands over in the same
    forward; the shared term reads the value projection's input x."""

    role = "add"

    def __init__(self, segment: Segment, d_in: int, rank: int, shared_rank: int, alpha, init: str, dropout: float):
        super().__init__()
        self.segment, hd = segment, segment.head_dim
        self.head = HeadLowRank(segment.heads, hd, hd, rank, _scale(alpha, rank), init)
        self.shared, self.dropout = _shared(d_in, segment.width, shared_rank, alpha, init), _dropout(dropout)
        self.keys = Handoff("KernelMix: the value projection ran before the key projection of its layer")

    def delta(self, keys: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        dtype = self.head.A.dtype
        keys = keys.unflatten(-1, (self.segment.heads, self.segment.head_dim))
        delta = self.head(self.dropout(keys.to(dtype)), shared_input=False).flatten(-2)
        if self.shared is not None:
            delta = delta + self.shared(self.dropout(x.to(dtype)))
        return delta.to(x.dtype)

    def forward(self, x):
        return self.delta(self.keys.take(), x)


class OutputMix(Part):
    """dO from the heads' outputs a_h (the output projection's input): block-wise down, one up."""

    role = "add"

    def __init__(self, heads: int, head_dim: int, d_out: int, rank: int, shared_rank: int, alpha, init: str,
                 dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.scale = heads, head_dim, _scale(alpha, rank)
        self.A = nn.Parameter(truncated_normal_(torch.empty(heads, rank, head_dim)))
        self.B = nn.Parameter(torch.empty(d_out, heads * rank))
        self.b = nn.Parameter(torch.empty(d_out))
        _fill(init, self.B, self.b)
        self.shared = _shared(heads * head_dim, d_out, shared_rank, alpha, init)
        self.dropout = _dropout(dropout)

    def forward(self, x):
        x_ = x.to(self.A.dtype)
        low = torch.einsum("...hi,hri->...hr", self.dropout(x_).unflatten(-1, (self.heads, self.head_dim)), self.A)
        delta = self.scale * (low.flatten(-2) @ self.B.T + self.b)
        return (delta if self.shared is None else delta + self.shared(self.dropout(x_))).to(x.dtype)


class FusedMixPart(Part):
    """GPT-2's fused q/k/v projection: adds dQ and dV to their slices; dV reads the key slice."""

    role = "output"

    def __init__(self, segments: dict[str, Segment], query: QueryMix | None, value: ValueMix | None):
        super().__init__()
        self.segments, self.query, self.value = segments, query, value
        self.inputs = Handoff("KernelMix: the fused q/k/v projection's output came without its input")

    def forward(self, h):
        x = self.inputs.take()
        if self.value is not None:
            k = self.segments["k"]
            h = self.segments["v"].add(h, self.value.delta(h[..., k.start:k.start + k.width], x))
        if self.query is not None:
            h = self.segments["q"].add(h, self.query(x))
        return h


def _place_fused(target, site, mixes):
    segments = projection_segments(target, site, "qkv", "KernelMix")
    query = mixes["q"](segments["q"]) if "q" in mixes else None
    value = mixes["v"](segments["v"]) if "v" in mixes else None
    part = FusedMixPart(segments, query, value)
    target.place(site, HandoffTap(part.inputs))
    target.place(site, part)


def build_kernel_mix(target, *, r_q, r_v, r_o, shared_r_q, shared_r_v, shared_r_o, alpha, dropout, targets, init,
                     layers, encoder_layers, decoder_layers, leave_out):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    d = target.hidden_size
    mixes = {}
    if "q" in targets:
        mixes["q"] = lambda seg: QueryMix(seg, d, r_q, shared_r_q, alpha, init, dropout)
    if "v" in targets:
        mixes["v"] = lambda seg: ValueMix(seg, d, r_v, shared_r_v, alpha, init, dropout)
    if target.layout.attention.get("fused_qkv"):
        if mixes:
            for site in target.sites("attn.qkv", selection):
                _place_fused(target, site, mixes)
    else:
        _place_separate(target, selection, mixes)
    if "o" in targets:
        heads, _ = head_counts(target)
        for site in target.sites("attn.o", selection):
            d_in, d_out = feature_dims(target.module(site.path))
            head_dim = split_heads(d_in, heads, site.path, "KernelMix")
            target.place(site, OutputMix(heads, head_dim, d_out, r_o, shared_r_o, alpha, init, dropout))


def _place_separate(target, selection, mixes):
    if "q" in mixes:
        for site in target.sites("attn.q", selection):
            target.place(site, mixes["q"](projection_segments(target, site, "q", "KernelMix")["q"]))
    if "v" in mixes:
        keys = {(s.stack, s.layer): s for s in target.sites("attn.k", selection)}
        for site in target.sites("attn.v", selection):
            segment = projection_segments(target, site, "v", "KernelMix")["v"]
            key_site = keys[(site.stack, site.layer)]
            key_segment = projection_segments(target, key_site, "k", "KernelMix")["k"]
            check(key_segment == segment, f"KernelMix: keys at {key_site.path} and values at {site.path} "
                                          "have different head shapes")
            part = mixes["v"](segment)
            target.place(key_site, HandoffTap(part.keys, role="output"))
            target.place(site, part)


register_method("kernel_adapter", KernelAdapter, build_kernel_adapter, aliases=("kernel", "kernel-adapter"),
                example=lambda model, tmp: KernelAdapter(per_head=True,
                                                          query_bias=model.config.model_type in ("gpt2", "t5")))
register_method("kernel_mix", KernelMix, build_kernel_mix, aliases=("kernel-mix",),
                example=lambda model, tmp: KernelMix(r_q=2, r_v=2, r_o=2, shared_r_q=2, shared_r_v=1, shared_r_o=1,
                                                    alpha=4.0))
