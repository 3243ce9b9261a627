"""y = h + s · (f(h W_d + b_d) W_u + b_u): a serial bottleneck adapter and its residual in one autograd node.

Why: on a frozen backbone the adapters are the only extra work of a train step, and with a bottleneck of
k = d/32 most of their cost is not arithmetic but passes over the (tokens x d) activations and
per-op overhead. Composed from torch ops, autograd spends about 13 such passes per adapter (the up
projection's output, the residual add, the bias sums, the gradient accumulation into h); written out
here it takes 7:
- forward: one GEMM reads h (down); one GEMM with beta = 1 writes h + s·a W_u, with the up bias folded
  in as an extra row of W_u against a column of ones appended to the small (tokens x k) activation;
- backward: g W_uᵀ, [a, 1]ᵀ g (weight and bias gradient together), (g_zᵀ h)ᵀ, and one GEMM with beta = 1
  that writes the gradient of h as g + g_z W_dᵀ.
The activation is recomputed from the small pre-activation z (ReLU, SiLU and tanh by formula, any other\nf through autograd).
Weights are (in x out); their gradients flow on through autograd (e.g. into PHM factors).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from transformers import activations

# transformers' own SiLU class in the versions that have one (ACT2FN["silu"]); else torch's
_SILU = (nn.SiLU, getattr(activations, "SiLUActivation", nn.SiLU))


class _ResidualBottleneck(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w_down, b_down, w_up, b_up, act: Callable, scale: float):
        flat = h.reshape(-1, h.shape[-1])
        z = torch.addmm(b_down, flat, w_down)
        a_ext = _with_ones(act(z))
        y = torch.addmm(flat, a_ext, torch.cat([w_up, b_up[None]]), alpha=scale)
        ctx.save_for_backward(flat, w_down, w_up, z)
        ctx.act, ctx.scale = act, scale
        return y.view(h.shape)

    @staticmethod
    def backward(ctx, grad):
        flat, w_down, w_up, z = ctx.saved_tensors
        g = grad.reshape(flat.shape)
        g_a = torch.mm(g, w_up.t())
        if ctx.scale != 1.0:
            g_a.mul_(ctx.scale)
        a, g_z = _activation_backward(ctx.act, z, g_a)
        g_h = g_w_down = g_b_down = g_w_up = g_b_up = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            g_up = torch.mm(_with_ones(a).t(), g)
            if ctx.scale != 1.0:
                g_up.mul_(ctx.scale)
            g_w_up, g_b_up = g_up[:-1], g_up[-1]
        if ctx.needs_input_grad[1]:
            # (g_zᵀ h)ᵀ, not hᵀ g_z: the same numbers, but BLAS runs the skinny product about twice as fast
            # with the long token axis as the contiguous inner dimension of both operands
            g_w_down = torch.mm(g_z.t(), flat).t()
        if ctx.needs_input_grad[2]:
            g_b_down = g_z.sum(0)
        if ctx.needs_input_grad[0]:
            g_h = torch.addmm(g, g_z, w_down.t()).view(grad.shape)
        return g_h, g_w_down, g_b_down, g_w_up, g_b_up, None, None


def _activation_backward(act: Callable, z: torch.Tensor, g_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(z), g_a · f'(z)). The common activations are written out: a nested autograd call inside a
    backward costs more than the few small ops it would run here."""
    if isinstance(act, nn.ReLU):
        return torch.relu(z), g_a * (z > 0)
    if isinstance(act, _SILU):
        sig = torch.sigmoid(z)
        return z * sig, g_a * sig * (1 + z * (1 - sig))
    if isinstance(act, nn.Tanh):
        a = torch.tanh(z)
        return a, g_a * (1 - a * a)
    with torch.enable_grad():
        z_leaf = z.detach().requires_grad_()
        a = act(z_leaf)
    return a.detach(), torch.autograd.grad(a, z_leaf, g_a)[0]


def _with_ones(a: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)


def residual_bottleneck(h: torch.Tensor, w_down: torch.Tensor, b_down: torch.Tensor, w_up: torch.Tensor,
                        b_up: torch.Tensor, act: Callable, scale: float = 1.0) -> torch.Tensor:
    """h + scale · (act(h @ w_down + b_down) @ w_up + b_up); w_down (d, k), w_up (k, d), same dtype as h."""
    return _ResidualBottleneck.apply(h, w_down, b_down, w_up, b_up, act, float(scale))
