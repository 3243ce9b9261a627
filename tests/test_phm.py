"""PHM layers, PHM-Adapter, Compacter, Compacter++ and the low-rank adapter on tiny models."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.core import attachment_parameters
from peftlab.errors import PeftlabError
from peftlab.io import adapter_state
from peftlab.methods.lowrank import LowRankLinear
from peftlab.methods.phm import PHMBlocks, PHMLinear, PHMRule
from peftlab.ops import kronecker_sum, low_rank_product
from tiny import tiny_batch, tiny_model


def _explicit_kron_sum(rules, blocks):
    return sum(torch.kron(rules[i], blocks[i]) for i in range(rules.shape[0]))


def _layers(model, cls=PHMLinear):
    return [m for m in model.modules() if isinstance(m, cls)]


# --- the op -----------------------------------------------------------------------------------------

def test_kronecker_sum_equals_explicit_sum_of_kron_products_batched():
    rules, blocks = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 5, 2)
    W = kronecker_sum(rules, blocks)
    assert W.shape == (3, 20, 8)
    for layer in range(3):
        torch.testing.assert_close(W[layer], _explicit_kron_sum(rules[layer], blocks[layer]), rtol=0, atol=1e-6)


def test_kronecker_sum_broadcasts_one_shared_rule_over_a_batch_of_layers():
    rule, blocks = torch.randn(4, 4, 4), torch.randn(5, 4, 3, 2)
    W = kronecker_sum(rule, blocks)
    for layer in range(5):
        torch.testing.assert_close(W[layer], _explicit_kron_sum(rule, blocks[layer]), rtol=0, atol=1e-6)


def test_kronecker_sum_rejects_mismatched_shapes():
    with pytest.raises(PeftlabError, match=r"\(3, 4, 4\)"):
        kronecker_sum(torch.randn(3, 4, 4), torch.randn(3, 2, 2))


def test_low_rank_product_has_the_rank():
    B = low_rank_product(torch.randn(4, 12, 2), torch.randn(4, 2, 6))
    assert [int(torch.linalg.matrix_rank(b)) for b in B] == [2, 2, 2, 2]


# --- the layer --------------------------------------------------------------------------------------

@pytest.mark.parametrize("factorized_rule,factorized_W", [(False, False), (True, False), (False, True), (True, True)])
def test_phm_weight_equals_explicit_kron_sum_and_forward_is_xW_plus_b(factorized_rule, factorized_W):
    n, d_in, d_out = 4, 16, 8
    rule = PHMRule(n, factorized_rule, True, "normal", 0.5)
    blocks = PHMBlocks(n, d_in // n, d_out // n, factorized_W, 2, "glorot-uniform", 0.01)
    layer = PHMLinear(d_in, d_out, rule, blocks, shared_rule=False, shared_blocks=False)
    with torch.no_grad():
        layer.bias.normal_()
    A = rule.phm_rule_left @ rule.phm_rule_right if factorized_rule else rule.phm_rule
    B = blocks.W_left @ blocks.W_right if factorized_W else blocks.W
    W = _explicit_kron_sum(A, B)
    torch.testing.assert_close(layer.phm_weight(), W, rtol=0, atol=1e-6)
    x = torch.randn(2, 3, d_in)
    torch.testing.assert_close(layer(x), x @ W + layer.bias, rtol=1e-5, atol=1e-6)
    if factorized_W:
        assert all(int(torch.linalg.matrix_rank(b)) == 2 for b in B.detach())


def test_rule_init_ranges_follow_the_design():
    torch.manual_seed(0)
    shared = PHMRule(4, False, True, "normal", 1e-4).phm_rule
    uniform = PHMRule(12, False, True, "uniform", 0.01).phm_rule
    assert 0.5e-4 < shared.std().item() < 1.5e-4
    assert uniform.abs().max().item() <= 0.01 and uniform.std().item() > 0.004


# --- the methods on tiny models -----------------------------------------------------------------------

def test_compacter_shares_one_rule_tensor_saved_once():
    model = tiny_model("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4), name="c")
    rule = model.peftlab_adapters["c"].phm_rule.phm_rule
    layers = _layers(model)
    assert len(layers) == 2 * 2 * 4          # 4 blocks with 2 placements each, down + up
    assert all(layer.rule.phm_rule is rule for layer in layers)
    keys = [k for k, t in adapter_state(model, "c").items() if t is rule]
    assert keys == ["home.phm_rule.phm_rule"]
    assert sum(p is rule for p in attachment_parameters(model, "c")) == 1


def test_shared_rule_gradient_accumulates_from_every_layer():
    """The rule's gradient is the sum of what each layer's weight W_j(rule) passes back to it."""
    model = tiny_model("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4), name="c")
    rule = model.peftlab_adapters["c"].phm_rule.phm_rule
    layers = _layers(model)
    upstream = {}
    bank = layers[0].bank
    build_weight = bank.weight

    def weight(layer):
        W = build_weight(layer)
        W.register_hook(lambda g: upstream.__setitem__(layer, g.clone()))
        return W

    bank.weight = weight
    model.train()
    model(**tiny_batch("t5")).loss.backward()
    assert set(upstream) == set(layers)
    contributions = []
    for layer in layers:
        leaf = rule.detach().requires_grad_()
        W = kronecker_sum(leaf, low_rank_product(layer.blocks.W_left, layer.blocks.W_right).detach())
        contributions.append(torch.autograd.grad((W * upstream[layer]).sum(), leaf)[0])
    assert all(c.abs().sum() > 0 for c in contributions)
    torch.testing.assert_close(rule.grad, torch.stack(contributions).sum(0), rtol=1e-5, atol=1e-12)


def test_phm_adapter_has_its_own_rule_per_layer():
    model = tiny_model("bert")
    pl.attach(model, pl.PHMAdapter(reduction_factor=4, phm_dim=2), name="p")
    rules = [layer.rule.phm_rule for layer in _layers(model)]
    assert len({id(r) for r in rules}) == len(rules) == 2 * 2 * 2
    assert "p" not in getattr(model, "peftlab_adapters", {})   # nothing model-wide to share


def test_shared_W_phm_keeps_one_block_set_per_shape():
    model = tiny_model("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4, shared_W_phm=True), name="c")
    blocks = {id(layer.blocks) for layer in _layers(model)}
    assert len(blocks) == 2                                      # 16 -> 4 and 4 -> 16
    assert sorted(model.peftlab_adapters["c"].phm_W.keys()) == ["1x4", "4x1"]


def test_compacter_plus_plus_sits_after_the_ffn_only():
    model = tiny_model("t5")
    pl.attach(model, pl.CompacterPlusPlus(reduction_factor=4, phm_dim=4), name="c")
    slots = model._peftlab.adapters["c"].hosts
    assert slots and all(path.endswith("DenseReluDense.wo") for path in slots)
    assert len(_layers(model)) == 2 * 2 * 2


def test_learn_phm_false_freezes_the_rule():
    model = tiny_model("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4, learn_phm=False), name="c")
    rule = model.peftlab_adapters["c"].phm_rule.phm_rule
    assert not rule.requires_grad
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert id(rule) not in trainable and trainable


def test_training_moves_rules_and_blocks_and_changes_outputs():
    model = tiny_model("t5")
    batch = tiny_batch("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4), name="c")
    with torch.no_grad():
        before = model(**batch).logits
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    assert all(not torch.equal(p, s) for p, s in zip(params, snapshot))
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, before)


def test_unfreeze_switches_train_layer_norms_and_lm_head():
    model = tiny_model("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4, unfreeze_layer_norms=True, unfreeze_lm_head=True))
    named = dict(pl.core.named_base_parameters(model))
    assert named["encoder.block.0.layer.0.layer_norm.weight"].requires_grad
    assert named["lm_head.weight"].requires_grad


def test_low_rank_adapter_uses_rank_one_products_with_biases():
    model = tiny_model("gpt2")
    pl.attach(model, pl.LowRankAdapter(reduction_factor=4), name="l")
    layers = _layers(model, LowRankLinear)
    assert len(layers) == 2 * 2 * 2
    layer = layers[0]
    assert tuple(layer.W_left.shape) == (16, 1) and tuple(layer.W_right.shape) == (1, 4)
    assert int(torch.linalg.matrix_rank(layer.weight_matrix().detach())) == 1
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), x @ layer.weight_matrix() + layer.bias)
    trainable, _ = pl.trainable_parameters(model)
    assert trainable == 4 * ((16 + 4 + 4) + (4 + 16 + 16))


# --- bad input ----------------------------------------------------------------------------------------

def test_phm_dim_not_dividing_the_layer_sizes_is_an_error_and_leaves_the_model_unchanged():
    model = tiny_model("t5")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PeftlabError, match="phm_dim 3 does not divide"):
        pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=3))
    assert not hasattr(model, "_peftlab") and not hasattr(model, "peftlab_adapters")
    assert list(model.state_dict()) == list(original)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs,value", [({"phm_dim": 0}, "0"), ({"phm_rank": -1}, "-1"),
                                          ({"phm_init_range": -0.1}, "-0.1"), ({"init": "zero_up"}, "zero_up"),
                                          ({"phm_c_init": "gaussian"}, "gaussian"),
                                          ({"hypercomplex_nonlinearity": "xavier"}, "xavier")])
def test_bad_config_values_are_named(kwargs, value):
    with pytest.raises(PeftlabError, match=value):
        pl.Compacter(**kwargs)


def test_configs_round_trip_through_json_dicts():
    config = pl.Compacter(reduction_factor=8, phm_dim=2, phm_rank=3, factorized_phm_rule=True)
    assert pl.config_from_dict(config.to_dict()) == config
    assert type(pl.config_from_dict({"method": "compacter++"})) is pl.CompacterPlusPlus


@pytest.mark.parametrize("config", [pl.Compacter(reduction_factor=4, phm_dim=4),
                                    pl.PHMAdapter(reduction_factor=4, phm_dim=4)], ids=["compacter", "phm_adapter"])
def test_backward_under_bf16_autocast_gives_float32_gradients_close_to_float32_training(config):
    """Under autocast the forward's matmuls run in bf16 while rules and blocks are float32 and the custom
    backward runs outside autocast: it once raised `expected m1 and m2 to have the same dtype`."""
    grads = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model("bert")
        pl.attach(model, config, name="c")
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(**{k: v for k, v in tiny_batch("bert").items() if k != "labels"}).logits
        logits.float().square().mean().backward()
        grads[precision] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n}
    assert grads["bf16"].keys() == grads["fp32"].keys() and grads["bf16"]
    for name, grad in grads["bf16"].items():
        assert grad.dtype == torch.float32, name
        reference = grads["fp32"][name]
        assert torch.isfinite(grad).all(), name
        # bf16 keeps 8 bits of mantissa: the gradient agrees to a few per cent of its scale
        assert (grad - reference).abs().max() <= 0.05 * reference.abs().max() + 1e-6, name
