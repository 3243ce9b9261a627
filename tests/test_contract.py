"""The contract every registered method keeps, on every supported architecture (tiny random models).

Driven by the registry: a new method is picked up here without editing this file. A method gives an
example config for these tests with `register_method(..., example=...)` when its defaults do not fit.
"""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.core import attachment_parameters
from peftlab.registry import contract_cases
from peftlab.state import controller_of
from tiny import ARCHS, tiny_batch, tiny_model

CASES = [(name, arch) for name in pl.method_names() for arch in ARCHS]


def _config(name, arch, tmp_path):
    config = contract_cases(name, tiny_model(arch), tmp_path)
    if config is None:
        pytest.skip(f"{name} does not apply to {arch}")
    return config


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@torch.no_grad()
def _perturb(model, name):
    """Move the adapter off its initialization, so equalities below are not trivially true."""
    g = torch.Generator().manual_seed(3)
    for p in attachment_parameters(model, name):
        p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _trained_names(model, name):
    owned = {id(p) for p in attachment_parameters(model, name)}
    claimed = set(controller_of(model).adapters[name].claimed)
    base = dict(pl.core.named_base_parameters(model))
    owned |= {id(base[n]) for n in claimed}
    return owned


@pytest.mark.parametrize("method,arch", CASES)
def test_only_method_parameters_train_and_backward_runs(method, arch, tmp_path):
    model = tiny_model(arch)
    pl.attach(model, _config(method, arch, tmp_path), name="a")
    owned = _trained_names(model, "a")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable and trainable == owned
    model.train()
    model(**tiny_batch(arch)).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


@pytest.mark.parametrize("method,arch", CASES)
def test_identity_at_init(method, arch, tmp_path):
    config = _config(method, arch, tmp_path)
    if not config.identity_at_init:
        pytest.skip("this method's initialization is not the identity")
    model = tiny_model(arch)
    batch = tiny_batch(arch)
    before = _logits(model, batch)
    pl.attach(model, config, name="a")
    torch.testing.assert_close(_logits(model, batch), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,arch", CASES)
def test_save_load_roundtrip(method, arch, tmp_path):
    config = _config(method, arch, tmp_path)
    model = tiny_model(arch)
    pl.attach(model, config, name="a")
    _perturb(model, "a")
    batch = tiny_batch(arch)
    expected = _logits(model, batch)
    pl.save(model, tmp_path / "saved")
    fresh = tiny_model(arch)
    pl.load(fresh, tmp_path / "saved")
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("method,arch", CASES)
def test_detach_restores_state_dict_bit_for_bit(method, arch, tmp_path):
    model = tiny_model(arch)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    pl.attach(model, _config(method, arch, tmp_path), name="a")
    model.train()
    model(**tiny_batch(arch)).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    pl.detach(model, "a")
    after = model.state_dict()
    assert list(after) == list(original)
    for key, value in original.items():
        assert torch.equal(after[key], value), key
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not hasattr(model, "_peftlab") and not hasattr(model, "peftlab_adapters")


@pytest.mark.parametrize("method,arch", CASES)
def test_merge_equals_unmerged_and_unmerge_restores(method, arch, tmp_path):
    config = _config(method, arch, tmp_path)
    if not config.mergeable:
        pytest.skip("this method has no weight-space form")
    model = tiny_model(arch)
    pl.attach(model, config, name="a")
    _perturb(model, "a")
    batch = tiny_batch(arch)
    unmerged = _logits(model, batch)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    pl.merge(model, "a")
    pl.merge(model, "a")   # idempotent
    torch.testing.assert_close(_logits(model, batch), unmerged, rtol=0, atol=1e-5)
    pl.unmerge(model, "a")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(model, batch), unmerged, rtol=0, atol=1e-5)
