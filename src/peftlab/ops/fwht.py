"""The unnormalized fast Walsh–Hadamard transform y = H_L x along the last axis, H_L = H_2^(⊗ log2 L).

Why not the textbook radix-2 butterfly: in PyTorch each butterfly level is a full pass over memory with
a tiny, badly strided inner axis, so a 2^24 transform takes seconds on a CPU. Instead the index is split
into digits of at most `RADIX` values (L = m_1 · m_2 · ... · m_k) and H_L = H_m1 ⊗ ... ⊗ H_mk is applied
one digit at a time, each as a small dense Hadamard matmul on one axis of a reshaped view. That is
k = ceil(log2 L / 5) passes of cost 2·m per element: O(L log L) with a constant that a matmul runs fast,
and no transposes (the matmul on a middle axis writes its result in place of the old layout).

H is symmetric (H^T = H), so the exact gradient of y = H x is H applied to the output gradient; the
autograd Function below does exactly that, which also makes double backward exact.

On CUDA, the optional `fast-hadamard-transform` package (Tri Dao) handles the lowest 15 bits per call
(its limit is a 32,768-wide axis); the remaining digits go through the matmul path. It is used with
`scale=1.0`, i.e. unnormalized like the rest of this module.
"""
from __future__ import annotations

import functools

import torch

from ..errors import PeftlabError

RADIX_BITS = 5          # digits of 32 values: measured fastest on CPU (16 and 64 are close)
CUDA_MAX_BITS = 15      # fast-hadamard-transform supports axes up to 2^15

try:  # optional CUDA kernel; absent on CPU-only installs
    from fast_hadamard_transform import hadamard_transform as _cuda_hadamard
except Exception:  # noqa: BLE001 (any import failure means "not available")
    _cuda_hadamard = None


@functools.lru_cache(maxsize=64)
def _hadamard_cached(m: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=dtype, device=device)
    while H.shape[0] < m:
        H = torch.cat((torch.cat((H, H), 1), torch.cat((H, -H), 1)), 0)
    return H


def hadamard_matrix(m: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The dense m x m Sylvester–Hadamard matrix (entries ±1); m a power of two. Do not modify it."""
    _check_power_of_two(m)
    return _hadamard_cached(m, dtype, str(torch.device(device)))


def _check_power_of_two(length: int) -> None:
    if length < 1 or length & (length - 1):
        raise PeftlabError(f"Walsh–Hadamard transform needs a power-of-two length, got {length}")


def _digit_sizes(bits: int, radix_bits: int) -> list[int]:
    sizes = []
    while bits > 0:
        step = min(radix_bits, bits)
        sizes.append(1 << step)
        bits -= step
    return sizes


@torch.no_grad()   # writes into buffers (out=); gradients come from the autograd Function below
def _transform_digits(y: torch.Tensor, inner: int, sizes: list[int], buffers=None) -> torch.Tensor:
    """Apply H_m on each digit in `sizes`, lowest first; `inner` = product of digits already done.

    `y` is (rows, L). The digit of size m with `inner` lower values sits on the middle axis of
    y.view(-1, m, inner), so H_m @ that view transforms it without moving the other digits.
    Stages write into two buffers in turn: a fresh large allocation per stage costs page faults that
    were measured at about a third of the CPU time. `buffers`: the caller's pair, written in that order
    (y may be the second: no stage writes into its own input)."""
    if buffers is None:
        buffers = [torch.empty(y.shape, dtype=y.dtype, device=y.device) for _ in range(min(2, len(sizes)))]
    for stage, m in enumerate(sizes):
        H = hadamard_matrix(m, y.dtype, y.device)
        out = buffers[stage % 2]
        if inner == 1:
            torch.matmul(y.reshape(-1, m), H, out=out.view(-1, m))   # H is symmetric: x @ H == (H x^T)^T
        else:
            torch.matmul(H, y.reshape(-1, m, inner), out=out.view(-1, m, inner))
        y, inner = out, inner * m
    return y


def _fwht_torch(x: torch.Tensor) -> torch.Tensor:
    length = x.shape[-1]
    y = x.reshape(-1, length)
    return _transform_digits(y, 1, _digit_sizes(length.bit_length() - 1, RADIX_BITS)).reshape(x.shape)


def _fwht_cuda(x: torch.Tensor) -> torch.Tensor:
    length = x.shape[-1]
    low_bits = min(length.bit_length() - 1, CUDA_MAX_BITS)
    low = 1 << low_bits
    y = _cuda_hadamard(x.reshape(-1, low).contiguous(), 1.0).reshape(-1, length)
    high = _digit_sizes(length.bit_length() - 1 - low_bits, RADIX_BITS)
    return _transform_digits(y, low, high).reshape(x.shape)


def cuda_kernel_available() -> bool:
    """Whether the optional `fast-hadamard-transform` kernel imported (CUDA tensors then go through it)."""
    return _cuda_hadamard is not None


def _use_cuda_kernel(x: torch.Tensor) -> bool:
    return _cuda_hadamard is not None and x.is_cuda and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


def fwht_raw(x: torch.Tensor) -> torch.Tensor:
    """H x along the last axis, without autograd bookkeeping (use `fwht` in differentiable code)."""
    _check_power_of_two(x.shape[-1])
    if x.shape[-1] == 1:
        return x.clone()
    return _fwht_cuda(x) if _use_cuda_kernel(x) else _fwht_torch(x)


def fwht_in_workspace(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """H a along the last axis of the 2-D `a`, computed in `a` and `b` (same shape; both overwritten).
    Returns whichever holds the result (on CUDA with the optional kernel: a new tensor). No autograd."""
    _check_power_of_two(a.shape[-1])
    if a.shape[-1] == 1 or _use_cuda_kernel(a):
        return fwht_raw(a)
    return _transform_digits(a, 1, _digit_sizes(a.shape[-1].bit_length() - 1, RADIX_BITS), (b, a))


class _WalshHadamard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return fwht_raw(x)

    @staticmethod
    def backward(ctx, grad):
        return _WalshHadamard.apply(grad)   # the exact transpose: H^T = H


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh–Hadamard transform along the last axis (length a power of two), batched over
    the leading axes. `fwht(fwht(x)) == L * x`; gradients are exact (the transform is its own transpose)."""
    _check_power_of_two(x.shape[-1])
    return _WalshHadamard.apply(x)
