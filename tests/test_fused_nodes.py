"""The hand-written autograd nodes equal their composed definitions, values and gradients."""
import pytest
import torch
from torch import nn
from transformers.activations import ACT2FN

import peftlab as pl
from peftlab.methods.bottleneck import BottleneckNet, SerialAdapter
from peftlab.ops.phm import kronecker_sum
from peftlab.ops.residual_bottleneck import residual_bottleneck
from tiny import tiny_model


def _composed(h, w_down, b_down, w_up, b_up, act, scale):
    return h + scale * (act(h @ w_down + b_down) @ w_up + b_up)


@pytest.mark.parametrize("act_name", ["swish", "relu", "gelu_new", "tanh", "silu"])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_residual_bottleneck_passes_gradcheck(act_name, scale):
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 8), (8, 4), (4,), (4, 8), (8,)]
    args = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    fn = lambda *a: residual_bottleneck(*a, ACT2FN[act_name], scale)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    torch.testing.assert_close(fn(*args), _composed(*args, ACT2FN[act_name], scale))


def test_residual_bottleneck_skips_the_input_gradient_when_h_needs_none():
    h = torch.randn(5, 8)
    weights = [torch.randn(s, requires_grad=True) for s in [(8, 4), (4,), (4, 8), (8,)]]
    residual_bottleneck(h, *weights, torch.relu).sum().backward()
    assert h.grad is None and all(w.grad is not None for w in weights)


def test_kronecker_sum_equals_explicit_kron_products_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    rules = torch.randn(3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    blocks = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kronecker_sum, (rules, blocks))
    explicit = sum(torch.kron(rules[i], blocks[i]) for i in range(3))
    torch.testing.assert_close(kronecker_sum(rules, blocks), explicit)


@pytest.mark.parametrize("config", [pl.Compacter(reduction_factor=4, phm_dim=4), pl.Pfeiffer(reduction_factor=4),
                                    pl.Houlsby(reduction_factor=4, scaling=2.0)])
def test_fused_adapter_equals_the_composed_branch_in_a_model(config):
    model = tiny_model("t5")
    pl.attach(model, config)
    adapters = [m for m in model.modules() if isinstance(m, SerialAdapter)]
    assert adapters and all(a.net.fusable for a in adapters)
    for adapter in adapters:               # move the up projections off their near-zero init
        with torch.no_grad():
            for p in adapter.net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    h = torch.randn(2, 5, adapters[0].net.down.in_features, requires_grad=True)
    net = adapters[0].net
    fused = adapters[0](h)
    composed = h + net.branch(h)
    torch.testing.assert_close(fused, composed)
    params = [h, *net.parameters()]
    for a, b in zip(torch.autograd.grad(fused.square().sum(), params),
                    torch.autograd.grad(composed.square().sum(), params)):
        torch.testing.assert_close(a, b)


def test_nets_with_layer_norms_or_learned_scale_take_the_composed_path():
    assert not BottleneckNet(8, 2, "relu", True, False, 1.0, "near_identity").fusable
    assert not BottleneckNet(8, 2, "relu", False, True, 1.0, "near_identity").fusable
    assert not BottleneckNet(8, 2, "relu", False, False, "learned", "near_identity").fusable
    assert BottleneckNet(8, 2, "relu", False, False, 1.0, "near_identity").fusable
    assert isinstance(BottleneckNet(8, 2, "relu", False, False, 1.0, "near_identity").down, nn.Linear)


def test_lora_add_to_equals_adding_its_delta_in_value_and_gradient():
    from peftlab.methods.lora import LoRAPart
    part = LoRAPart(8, 6, r=2, alpha=4.0, dropout=0.0)
    with torch.no_grad():
        part.lora_B.weight.normal_()
    x, h = torch.randn(3, 4, 8, requires_grad=True), torch.randn(3, 4, 6, requires_grad=True)
    fused, plain = part.add_to(h, x), h + part(x)
    torch.testing.assert_close(fused, plain)
    params = [x, h, *part.parameters()]
    for a, b in zip(torch.autograd.grad(fused.square().sum(), params), torch.autograd.grad(plain.square().sum(), params)):
        torch.testing.assert_close(a, b)
