"""Parameterized hypercomplex multiplication (PHM) weights: W = sum_i A_i ⊗ B_i.

A (..., n, n, n) holds n "rules" A_i of shape n x n; B (..., n, p, q) holds n blocks B_i of shape p x q;
W (..., n·p, n·q) is their Kronecker sum. Leading axes are batch axes, so several layers' weights come
out of one call. Block (a, b) of W is sum_i A_i[a, b] · B_i — one matmul, no Python loop over i.

`kronecker_sums` is what the PHM layers use: the weights of every layer of one shape in a model, with
factorized blocks B_i = s_i t_iᵀ, as ONE autograd node. Built layer by layer, a Compacter step ran two
small nodes per PHM layer forward and three backward (4 PHM layers per transformer block), a fixed cost
that a small batch does not amortize.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

from ..errors import PeftlabError


def kronecker_sum(rules: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """sum_i kron(rules[..., i, :, :], blocks[..., i, :, :]) -> (..., n·p, n·q)."""
    n = rules.shape[-3]
    if rules.shape[-2:] != (n, n) or blocks.shape[-3] != n:
        raise PeftlabError(f"Kronecker sum needs rules (..., n, n, n) and blocks (..., n, p, q), "
                           f"got {tuple(rules.shape)} and {tuple(blocks.shape)}")
    p, q = blocks.shape[-2:]
    # W[a·p + r, b·q + c] = sum_i A[i, a, b] · B[i, r, c]: one (n² x n) @ (n x p·q) matmul, then the
    # (a, b, r, c) -> (a, r, b, c) reorder (measured ~20 % faster than the equivalent einsum)
    products = _rules_t(rules) @ blocks.reshape(*blocks.shape[:-3], n, p * q)
    lead = products.shape[:-2]
    return products.reshape(*lead, n, n, p, q).transpose(-3, -2).reshape(*lead, n * p, n * q)


def _rules_t(rules: torch.Tensor) -> torch.Tensor:
    """(..., n, n, n) -> (..., n², n): row a·n + b holds A_i[a, b] over i."""
    n = rules.shape[-3]
    return rules.reshape(*rules.shape[:-3], n, n * n).transpose(-1, -2)


def low_rank_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(..., p, r) @ (..., r, q): a factorized block B = s tᵀ (rank r), batched over leading axes."""
    if left.shape[-1] != right.shape[-2]:
        raise PeftlabError(f"low-rank factors do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")
    return torch.matmul(left, right)


def kronecker_sums(rules: Sequence[torch.Tensor], rule_of: Sequence[int], lefts: Sequence[torch.Tensor],
                   rights: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """W_j = kronecker_sum(rules[rule_of[j]], B_j) for layers j = 0..L-1 of one shape, as one autograd node.

    B_j = lefts[j] @ rights[j] (n, p, r) @ (n, r, q) when `rights` is given, else lefts[j] (n, p, q). A rule
    shared by several layers appears once in `rules` (its gradient sums over them); shared blocks may
    appear repeatedly. A W_j no forward used gets no gradient, and neither do its own factors."""
    count = len(lefts)
    if len(rule_of) != count or (rights is not None and len(rights) != count):
        raise PeftlabError(f"kronecker_sums needs one rule index and factor per layer, got {len(rule_of)} "
                           f"indices, {count} left and {len(rights or [])} right factors")
    if not count:
        return ()
    return _KroneckerSums.apply(tuple(rule_of), len(rules), rights is not None, *rules, *lefts, *(rights or ()))


class _KroneckerSums(torch.autograd.Function):
    """What backward needs is kept on ctx, not saved with save_for_backward: a W whose parameters have not
    changed may be handed to a second forward (gradient accumulation), whose backward passes this node again."""

    @staticmethod
    def forward(ctx, rule_of, n_rules, factorized, *tensors):
        ctx.set_materialize_grads(False)
        count = len(rule_of)
        rules = torch.stack(tensors[:n_rules])
        lefts = torch.stack(tensors[n_rules:n_rules + count])
        rights = torch.stack(tensors[n_rules + count:]) if factorized else None
        blocks = lefts @ rights if factorized else lefts               # (L, n, p, q)
        index = torch.tensor(rule_of, device=rules.device)
        layer_rules = rules if n_rules == 1 else rules.index_select(0, index)
        ctx.pieces = (layer_rules, lefts, rights, blocks, index, n_rules)
        ctx.input_dtypes = [t.dtype for t in tensors]
        return kronecker_sum(layer_rules, blocks).unbind(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        count = len(grads)
        used = [j for j, grad in enumerate(grads) if grad is not None]
        out = [None] * (3 + len(ctx.input_dtypes))
        if not used:
            return tuple(out)
        # under autocast the forward's matmuls ran in bf16/fp16 while the factors are float32, and backward
        # runs outside autocast: compute in the widest of the dtypes met, hand each input its own dtype
        dtype = _widest(ctx.pieces[0], *(grads[j] for j in used))
        layer_rules, lefts, rights, blocks = (t if t is None else t.to(dtype) for t in ctx.pieces[:4])
        index, n_rules = ctx.pieces[4:]
        grads = [g if g is None else g.to(dtype) for g in grads]
        n, p, q = blocks.shape[1:]
        pick = torch.tensor(used, device=blocks.device)
        grad_products = torch.stack([grads[j] for j in used]).reshape(-1, n, p, n, q).transpose(2, 3).reshape(
            -1, n * n, p * q)
        rules_used = layer_rules if n_rules == 1 else layer_rules.index_select(0, pick)
        if any(ctx.needs_input_grad[3:3 + n_rules]):
            per_layer = (grad_products @ blocks.index_select(0, pick).reshape(-1, n, p * q).transpose(1, 2))
            per_layer = per_layer.transpose(1, 2).reshape(-1, n, n, n)
            summed = per_layer.new_zeros(n_rules, n, n, n).index_add_(0, index.index_select(0, pick), per_layer)
            out[3:3 + n_rules] = summed.unbind(0)
        grad_blocks = (_rules_t(rules_used).transpose(1, 2) @ grad_products).reshape(-1, n, p, q)
        first = 3 + n_rules
        if rights is None:
            _scatter(out, first, used, grad_blocks)
        else:
            _scatter(out, first, used, grad_blocks @ rights.index_select(0, pick).transpose(-1, -2))
            _scatter(out, first + count, used, lefts.index_select(0, pick).transpose(-1, -2) @ grad_blocks)
        return tuple(g if g is None else g.to(d) for g, d in zip(out, [None] * 3 + ctx.input_dtypes))


def _widest(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _scatter(out: list, first: int, used: list[int], grads: torch.Tensor) -> None:
    for grad, j in zip(grads.unbind(0), used):
        out[first + j] = grad


def net_dtype(net) -> torch.dtype:
    """The dtype a bottleneck net (`down`, `up`) computes in: its first tensor's, or, for PHM projections
    whose tensors all live in the adapter's home module, the first of the up projection's blocks."""
    tensor = next(net.parameters(), None)
    if tensor is None:
        tensor = net.up.blocks.tensors()[0]
    return tensor.dtype
