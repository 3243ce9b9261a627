"""The fast Walsh–Hadamard transform: exact against scipy's Hadamard matrix, its own transpose in
backward, batched, and the optional CUDA kernel's composition (checked on CPU with a stand-in kernel)."""
from __future__ import annotations

import importlib

import pytest
import scipy.linalg
import torch

from peftlab.errors import PeftlabError
from peftlab.ops import fwht, hadamard_matrix

# `peftlab.ops.fwht` the attribute is the function; the module is reached by its import path
fwht_module = importlib.import_module("peftlab.ops.fwht")


def _scipy_hadamard(length: int) -> torch.Tensor:
    return torch.tensor(scipy.linalg.hadamard(length), dtype=torch.float64)


@pytest.mark.parametrize("bits", [0, 1, 2, 3, 5, 6, 7, 10, 11, 12])
def test_equals_scipy_hadamard_times_x(bits):
    length = 1 << bits
    x = torch.randn(3, length, dtype=torch.float64)
    expected = (_scipy_hadamard(length) @ x.T).T
    torch.testing.assert_close(fwht(x), expected, rtol=1e-12, atol=1e-9)


def test_float32_matches_within_rounding_and_batches_over_leading_axes():
    x = torch.randn(2, 3, 4096)
    expected = torch.einsum("ij,abj->abi", _scipy_hadamard(4096), x.double())
    out = fwht(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out[1, 2], fwht(x[1, 2]))


def test_applying_twice_multiplies_by_length():
    x = torch.randn(5, 512, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)), 512 * x, rtol=1e-12, atol=1e-10)


def test_hadamard_matrix_is_sylvester():
    torch.testing.assert_close(hadamard_matrix(64, torch.float64), _scipy_hadamard(64), rtol=0, atol=0)


@pytest.mark.parametrize("length", [1, 2, 16, 64])
def test_gradcheck_float64(length):
    x = torch.randn(2, length, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))


def test_gradgradcheck_float64():
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(fwht, (x,))


def test_gradient_is_exactly_the_transpose():
    x = torch.randn(4, 1024, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 1024, dtype=torch.float64)
    (fwht(x) * v).sum().backward()
    torch.testing.assert_close(x.grad, (_scipy_hadamard(1024).T @ v.T).T, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("length", [0, 3, 12, 1000])
def test_rejects_lengths_that_are_not_powers_of_two(length):
    with pytest.raises(PeftlabError, match=f"got {length}"):
        fwht(torch.randn(2, length))


def test_cuda_kernel_path_composes_with_the_matmul_digits(monkeypatch):
    """The CUDA route transforms the lowest CUDA_MAX_BITS bits with the kernel and the rest by matmuls;
    with a dense stand-in for the kernel (same call signature, scale=1.0) the result must be exact."""
    calls = []

    def stand_in(x, scale):
        calls.append((tuple(x.shape), scale))
        return (x.double() @ _scipy_hadamard(x.shape[-1]).T * scale).to(x.dtype)

    monkeypatch.setattr(fwht_module, "_cuda_hadamard", stand_in)
    monkeypatch.setattr(fwht_module, "_use_cuda_kernel", lambda x: True)
    monkeypatch.setattr(fwht_module, "CUDA_MAX_BITS", 3)
    x = torch.randn(2, 256, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), (_scipy_hadamard(256) @ x.T).T, rtol=1e-12, atol=1e-9)
    assert calls == [((64, 8), 1.0)]


@pytest.mark.skipif(not torch.cuda.is_available() or not fwht_module.cuda_kernel_available(),
                    reason="needs a GPU and the optional fast-hadamard-transform package")
def test_cuda_kernel_matches_torch_path():
    x = torch.randn(3, 1 << 17, device="cuda")
    torch.testing.assert_close(fwht(x).cpu(), fwht_module._fwht_torch(x.cpu()), rtol=1e-4, atol=1e-2)
