"""Attention geometry shared by the kernel methods, the inducer and the combinations: how many query
and key/value heads a layer has, where each of q, k, v sits in a (possibly fused) projection's output,
and which attention projections a layer selection covers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import check
from ..errors import PeftlabError
from ..targeting import LayerSelection, feature_dims


def head_counts(target) -> tuple[int, int]:
    """(query heads, key/value heads) from the model config; raise when unknown or inconsistent."""
    config = target.hf_config
    heads = getattr(config, "num_attention_heads", None)
    check(isinstance(heads, int) and heads > 0,
          f"{type(target.model).__name__}: cannot tell the number of attention heads (got {heads!r})")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    check(isinstance(kv_heads, int) and heads % kv_heads == 0,
          f"num_key_value_heads={kv_heads!r} does not divide num_attention_heads={heads}")
    return heads, kv_heads


@dataclass(frozen=True)
class Segment:
    """One projection's output inside a (possibly fused) module: channels [start, start + heads*head_dim)."""

    start: int
    heads: int
    head_dim: int

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    def take(self, h: torch.Tensor) -> torch.Tensor:
        """The segment of `h` as (..., heads, head_dim)."""
        return h[..., self.start:self.start + self.width].unflatten(-1, (self.heads, self.head_dim))

    def put(self, h: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """`h` with this segment replaced by `new` (..., heads, head_dim); out of place."""
        end = self.start + self.width
        return torch.cat([h[..., :self.start], new.flatten(-2).to(h.dtype), h[..., end:]], dim=-1)

    def add(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """`h` with the flat `delta` added to this segment; out of place."""
        end = self.start + self.width
        return torch.cat([h[..., :self.start], h[..., self.start:end] + delta.to(h.dtype), h[..., end:]], dim=-1)


def split_heads(width: int, heads: int, path: str, method: str) -> int:
    if heads <= 0 or width % heads:
        raise PeftlabError(f"{method}: {heads} attention heads do not divide the {width} features of {path}")
    return width // heads


def projection_segments(target, site, kinds: str, method: str) -> dict[str, Segment]:
    """Where the q / k / v outputs (`kinds`, e.g. "qk") sit in the module at `site`."""
    dims = feature_dims(target.module(site.path))
    check(dims is not None, f"{method} cannot act on {site.path}: it is not a linear projection")
    heads, kv_heads = head_counts(target)
    counts = {"q": heads, "k": kv_heads, "v": kv_heads}
    if site.slot == "attn.qkv":   # fused q, k, v of equal width (GPT-2)
        width = dims[1] // 3
        check(width * 3 == dims[1], f"{method}: fused projection {site.path} has {dims[1]} outputs, not 3 x d")
        return {kind: Segment(i * width, counts[kind], split_heads(width, counts[kind], site.path, method))
                for i, kind in enumerate("qkv") if kind in kinds}
    kind = site.slot[-1]
    return {kind: Segment(0, counts[kind], split_heads(dims[1], counts[kind], site.path, method))}


def attention_sites(target, kinds: str, selection: LayerSelection) -> list:
    """Sites of the self-attention projections named by `kinds` ("q", "k", "v"); the fused one once."""
    if target.layout.attention.get("fused_qkv"):
        return target.sites("attn.qkv", selection)
    return [site for kind in kinds for site in target.sites(f"attn.{kind}", selection)]


def truncated_normal_(tensor: torch.Tensor, std: float = 0.01) -> torch.Tensor:
    """N(0, std^2) truncated at two standard deviations (the kernel-adapters papers' init)."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
