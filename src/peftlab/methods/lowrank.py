"""The low-rank adapter (Compacter's baseline): a bottleneck adapter whose down and up projections are
each a rank-r product W = s tᵀ (r = 1 in the paper), with the biases kept.

The product is never formed: x (s tᵀ) = (x s) tᵀ costs (in + out)·r per token instead of in·out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import check
from ..registry import register_method
from .bottleneck import Bottleneck, NonLinearity, build_bottleneck
from .phm import glorot_


@dataclass
class LowRankAdapter(Bottleneck):
    """Houlsby placement, reduction factor 32, rank-1 projections (Compacter's "Adapter-LowRank")."""

    reduction_factor: float = 32.0
    non_linearity: NonLinearity = "swish"
    mh_adapter: bool = True
    output_adapter: bool = True
    low_rank_rank: int = 1
    low_rank_w_init: Literal["glorot-uniform", "glorot-normal"] = "glorot-uniform"
    compat_choices = ()     # AdapterHub has no low-rank adapter to reproduce

    def validate(self):
        super().validate()
        name = type(self).__name__
        check(self.low_rank_rank >= 1, f"{name}.low_rank_rank must be >= 1, got {self.low_rank_rank}")
        check(self.init == "near_identity", f"{name}.init {self.init!r} is not supported: the low-rank factors "
                                            f"initialize themselves (low_rank_w_init)")


class LowRankLinear(nn.Module):
    """y = (x W_left) W_right + b with W_left (in, r), W_right (r, out), each glorot with gain √2 (uniform or
    normal, as `adapters/low_rank_layer.py:22-32` of the Compacter code), b zeros."""

    def __init__(self, in_features: int, out_features: int, rank: int, w_init: str = "glorot-uniform"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.W_left = nn.Parameter(torch.empty(in_features, rank))
        self.W_right = nn.Parameter(torch.empty(rank, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        with torch.no_grad():
            for tensor in (self.W_left, self.W_right):
                glorot_(tensor, w_init)

    def weight_matrix(self) -> torch.Tensor:
        """The (in x out) product, for inspection and tests."""
        return self.W_left @ self.W_right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(x, self.W_left), self.W_right) + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.W_left.shape[1]}"


def build_low_rank_adapter(target, *, low_rank_rank, low_rank_w_init, **kwargs):
    build_bottleneck(target, **kwargs,
                     linear=lambda d_in, d_out: LowRankLinear(d_in, d_out, low_rank_rank, low_rank_w_init))


register_method("low_rank_adapter", LowRankAdapter, build_low_rank_adapter,
                aliases=("lowrank", "adapter-lowrank", "low-rank-adapter"),
                example=lambda model, tmp_dir: LowRankAdapter(reduction_factor=4))
