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

import torch

from .fwht import fwht


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
                  row_scale: torch.Tensor) -> torch.Tensor:
    """(k, L) rows H G Π H B z · row_scale for k targets sharing L (slice each row to its own D).

    signs (k, Lz); index (k, L) int32 or int64, each row's Π mod Lz (see `row_offsets`); gauss (k, L);
    row_scale (k,) — may carry gradient (SAID's λ).
    The map is linear, so the row scale is applied to the short input (k x Lz) rather than the long
    output (k x L): the same numbers up to rounding, one fewer pass over k x L in forward and backward."""
    short = signs.shape[-1]
    scaled = signs * (fit_length(z, short)[None, :] * row_scale[:, None])
    u = fwht(scaled)                                   # (k, Lz): H B z, one period of it
    # (k, L): Π H B z, as a flat index_select, which (unlike gather) takes int32 indices: 4 bytes
    # less per parameter of buffers, at the same speed
    v = u.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)
    return fwht(v * gauss)


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
                         scale)
    return rows[0, :size]
