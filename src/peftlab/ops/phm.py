"""Parameterized hypercomplex multiplication (PHM) weights: W = sum_i A_i ⊗ B_i.

A (..., n, n, n) holds n "rules" A_i of shape n x n; B (..., n, p, q) holds n blocks B_i of shape p x q;
W (..., n·p, n·q) is their Kronecker sum. Leading axes are batch axes, so several layers' weights come
out of one call. Block (a, b) of W is sum_i A_i[a, b] · B_i — one einsum, no Python loop over i.
"""
from __future__ import annotations

import torch

from ..errors import PeftlabError


def kronecker_sum(rules: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """sum_i kron(rules[..., i, :, :], blocks[..., i, :, :]) -> (..., n·p, n·q)."""
    n = rules.shape[-3]
    if rules.shape[-2:] != (n, n) or blocks.shape[-3] != n:
        raise PeftlabError(f"Kronecker sum needs rules (..., n, n, n) and blocks (..., n, p, q), "
                           f"got {tuple(rules.shape)} and {tuple(blocks.shape)}")
    if rules.dim() == blocks.dim() == 3:
        return _KroneckerSum.apply(rules, blocks)
    p, q = blocks.shape[-2:]
    lead = torch.broadcast_shapes(rules.shape[:-3], blocks.shape[:-3])
    # W[a·p + r, b·q + c] = sum_i A[i, a, b] · B[i, r, c]: one (n² x n) @ (n x p·q) matmul, then the
    # (a, b, r, c) -> (a, r, b, c) reorder (measured ~20 % faster than the equivalent einsum)
    products = rules.reshape(*rules.shape[:-3], n, n * n).transpose(-1, -2) @ blocks.reshape(
        *blocks.shape[:-3], n, p * q)
    W = products.reshape(*lead, n, n, p, q).transpose(-3, -2)
    return W.reshape(*lead, n * p, n * q)


class _KroneckerSum(torch.autograd.Function):
    """The one-layer case as a single autograd node: composed from views it is ~8 nodes forward and
    backward per PHM layer, and a Compacter has 4 PHM layers per transformer layer (measurable per step)."""

    @staticmethod
    def forward(ctx, rules, blocks):
        n, p, q = blocks.shape
        rules_t, flat_blocks = rules.reshape(n, n * n).t(), blocks.reshape(n, p * q)
        ctx.save_for_backward(rules_t, flat_blocks)
        ctx.shape = (n, p, q)
        return (rules_t @ flat_blocks).view(n, n, p, q).transpose(1, 2).reshape(n * p, n * q)

    @staticmethod
    def backward(ctx, grad):
        rules_t, flat_blocks = ctx.saved_tensors
        n, p, q = ctx.shape
        grad_products = grad.reshape(n, p, n, q).transpose(1, 2).reshape(n * n, p * q)
        grad_rules = grad_blocks = None
        if ctx.needs_input_grad[0]:
            grad_rules = (grad_products @ flat_blocks.t()).t().reshape(n, n, n)
        if ctx.needs_input_grad[1]:
            grad_blocks = (rules_t.t() @ grad_products).reshape(n, p, q)
        return grad_rules, grad_blocks


def low_rank_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(..., p, r) @ (..., r, q): a factorized block B = s tᵀ (rank r), batched over leading axes."""
    if left.shape[-1] != right.shape[-2]:
        raise PeftlabError(f"low-rank factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")
    return torch.matmul(left, right)
