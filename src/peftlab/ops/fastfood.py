"""Fastfood random projections z -> P(z) (Le et al. 2013; Li et al. 2018; Aghajanyan et al. 2021).

For a target of D values: L = 2^ceil(log2 D); z is zero-padded (or truncated) to L and
    P(z) = (H G Π H B z)[:D] / (σ √(D / L)),   σ = √(L Σ G²),
with B random ±1, Π a random permutation, G ~ N(0, 1) and H the unnormalized Walsh–Hadamard transform.
This keeps norms in expectation: E ||P(z)||² = ||z||² (z as padded/truncated to L).

Shortcut, exact: B z is non-zero only in its first Lz = min(L, 2^ceil(log2 len z)) entries, and
H_L = H_(L/Lz) ⊗ H_Lz, so H_L B z is H_Lz (B z)[:Lz] repeated L/Lz times. Hence Π H B z is a gather from
that short transform at indices Π mod Lz, and only ONE length-L transform runs per target (two in a
training step, counting backward) instead of two (four).

Everything here is batched over rows: several targets with the same L share one transform call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

from .fwht import fwht, fwht_in_workspace


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class FastfoodPieces:
    """The random pieces for one target of `size` values (regenerated from a seed, never saved)."""

    signs: torch.Tensor      # (Lz,) ±1: the part of B that meets z
    index: torch.Tensor      # (L,) int32: Π mod Lz
    gauss: torch.Tensor      # (L,) G
    scale: float             # 1 / (σ √(D / L))


def draw_pieces(size: int, z_length: int, generator: torch.Generator) -> FastfoodPieces:
    """Draw one target's pieces from `generator` (CPU), in a fixed order so a seed reproduces them."""
    length = next_power_of_two(size)
    short = min(length, next_power_of_two(z_length))
    signs = torch.randint(0, 2, (short,), generator=generator, dtype=torch.int8).float() * 2 - 1
    perm = torch.randperm(length, generator=generator)
    gauss = torch.randn(length, generator=generator)
    sigma = torch.sqrt(length * gauss.double().square().sum()).item()
    scale = 1.0 / (sigma * (size / length) ** 0.5)
    return FastfoodPieces(signs, (perm % short).to(torch.int32), gauss, scale)


def fit_length(z: torch.Tensor, length: int) -> torch.Tensor:
    """z zero-padded or truncated to `length`."""
    if z.shape[-1] >= length:
        return z[..., :length]
    return torch.nn.functional.pad(z, (0, length - z.shape[-1]))


def fastfood_rows(z: torch.Tensor, signs: torch.Tensor, index: torch.Tensor, gauss: torch.Tensor,
                  row_scale: torch.Tensor, sizes: Sequence[int],
                  workspace: "Workspace | None" = None) -> tuple[torch.Tensor, ...]:
    """(H G Π H B z)[:sizes[r]] · row_scale[r] for k targets sharing L, one tensor per target.

    signs (k, Lz); index (k, L) int32 or int64, each row's Π mod Lz (see `row_offsets`); gauss (k, L);
    row_scale (k,) — may carry gradient (SAID's λ).
    The map is linear, so the row scale is applied to the short input (k x Lz) rather than the long
    output (k x L): the same numbers up to rounding, one fewer pass over k x L in forward and backward.
    With a `workspace` the long (k x L) half runs in its two reused buffers and the returned tensors are
    views of one of them, valid until the next call with that workspace: for callers that consume them
    at once (the intrinsic forward hook)."""
    short = signs.shape[-1]
    scaled = signs * (fit_length(z, short)[None, :] * row_scale[:, None])
    u = fwht(scaled)                                   # (k, Lz): H B z, one period of it
    return _LongRows.apply(u, index, gauss, tuple(sizes), workspace)


class Workspace:
    """Two (k x L) buffers kept from one step to the next. A fresh allocation that large is mapped anew
    and zero-filled page by page by the kernel each time it is touched: on a CPU that was more than half
    of Intrinsic SAID's extra time per step (T5-small, 61M parameters, measured)."""

    def __init__(self):
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def pair(self, like: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
        old = self.buffers
        if old is None or old[0].shape != shape or old[0].dtype != like.dtype or old[0].device != like.device:
            self.buffers = old = tuple(like.new_empty(shape) for _ in range(2))
        return old

    def __getstate__(self):          # copies start without the buffers
        return {"buffers": None}


class _LongRows(torch.autograd.Function):
    """u (k, Lz) -> rows of H G Π u, row r cut to sizes[r]: Π u is a gather (an index_select, which takes
    int32 indices: 4 bytes less per parameter of buffers than gather), G scales in place, H runs in the
    workspace. Backward copies the rows' gradients into the workspace, transforms them, scales by G and
    scatters them back to u. Rows no forward used contribute zero."""

    @staticmethod
    def forward(ctx, u, index, gauss, sizes, workspace):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(index, gauss)
        ctx.sizes, ctx.workspace, ctx.short_shape = sizes, workspace, u.shape
        a, b = _buffers(workspace, u, gauss.shape)
        torch.index_select(u.reshape(-1), 0, index.reshape(-1), out=a.view(-1))
        out = fwht_in_workspace(a.mul_(gauss), b)
        # detach(): plain tensors on the buffer's memory (same version counter), not autograd views of it, as
        # autograd forbids views of one base returned together once that base is written again (next step)
        return tuple(row[:size].detach() for row, size in zip(out.unbind(0), sizes))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        index, gauss = ctx.saved_tensors
        a, b = _buffers(ctx.workspace, gauss, gauss.shape)
        for row, grad, size in zip(a.unbind(0), grads, ctx.sizes):
            if grad is None:
                row.zero_()
            else:
                row[:size].copy_(grad)
                row[size:].zero_()
        out = fwht_in_workspace(a, b).mul_(gauss)
        grad_u = out.new_zeros(ctx.short_shape).view(-1).index_add_(0, index.reshape(-1), out.view(-1))
        return grad_u.view(ctx.short_shape), None, None, None, None


def _buffers(workspace: Workspace | None, like: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    if workspace is None:
        return like.new_empty(shape), like.new_empty(shape)
    return workspace.pair(like, shape)


def row_offsets(index: torch.Tensor, short: int) -> torch.Tensor:
    """Stacked per-row indices (k, L) made flat positions into a (k, Lz) array: row r gets + r·Lz."""
    if index.shape[0] * short >= 2 ** 31:
        index = index.long()          # flat positions past int32
    offsets = torch.arange(index.shape[0], dtype=index.dtype, device=index.device) * short
    return index + offsets[:, None]


def fastfood(z: torch.Tensor, size: int, pieces: FastfoodPieces) -> torch.Tensor:
    """P(z) for one target (a convenience over `fastfood_rows`)."""
    scale = torch.tensor([pieces.scale], dtype=z.dtype, device=z.device)
    rows = fastfood_rows(z, pieces.signs[None].to(z), pieces.index[None].to(z.device), pieces.gauss[None].to(z),
                         scale, [size])
    return rows[0]


class _ScaledGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x unchanged in forward; its gradient multiplied by `factor` in backward."""
    return _ScaledGradient.apply(x, factor)
