"""The batched PHM weight node (ops/phm.kronecker_sums) and the bank that builds each shape once per forward."""
from __future__ import annotations

import copy

import pytest
import torch

import peftlab as pl
from peftlab.methods import phm_bank
from peftlab.methods.phm import PHMLinear
from peftlab.ops.phm import kronecker_sum, kronecker_sums, low_rank_product
from tiny import tiny_batch, tiny_model


def _tensors(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


@pytest.mark.parametrize("factorized", [False, True])
@pytest.mark.parametrize("rule_of", [(0, 0, 0), (0, 1, 2), (1, 0, 1)])
def test_kronecker_sums_equals_one_kronecker_sum_per_layer_and_passes_gradcheck(factorized, rule_of):
    n, p, q, r = 2, 3, 2, 2
    rules = _tensors([(n, n, n)] * (max(rule_of) + 1), 0)
    lefts = _tensors([(n, p, r) if factorized else (n, p, q)] * 3, 1)
    rights = _tensors([(n, r, q)] * 3, 2) if factorized else None
    weights = kronecker_sums(rules, rule_of, lefts, rights)
    for j, W in enumerate(weights):
        block = low_rank_product(lefts[j], rights[j]) if factorized else lefts[j]
        torch.testing.assert_close(W, kronecker_sum(rules[rule_of[j]], block))

    def summed(*tensors):     # a scalar that reads every weight differently
        rs, rest = tensors[:len(rules)], tensors[len(rules):]
        ls, rr = (rest[:3], rest[3:]) if factorized else (rest, None)
        return sum((k + 1) * W.sin().sum() for k, W in enumerate(kronecker_sums(rs, rule_of, ls, rr)))
    assert torch.autograd.gradcheck(summed, (*rules, *lefts, *(rights or [])))


def test_a_weight_no_one_used_gives_its_factors_no_gradient():
    rule, = _tensors([(2, 2, 2)], 0)
    lefts, rights = _tensors([(2, 3, 1)] * 2, 1), _tensors([(2, 1, 2)] * 2, 2)
    first, _unused = kronecker_sums([rule], (0, 0), lefts, rights)
    first.sum().backward()
    assert lefts[0].grad is not None and rights[0].grad is not None
    assert lefts[1].grad is None and rights[1].grad is None


def test_shared_blocks_passed_twice_get_both_gradients():
    rule, = _tensors([(2, 2, 2)], 0)
    block, = _tensors([(2, 3, 2)], 1)
    a, b = kronecker_sums([rule], (0, 0), [block, block])
    (a.sum() + 2 * b.sum()).backward()
    reference = block.detach().requires_grad_()
    W = kronecker_sum(rule.detach(), reference)
    (3 * W.sum()).backward()
    torch.testing.assert_close(block.grad, reference.grad)


# --- the bank in a model -------------------------------------------------------------------------------

def _compacter(**kwargs):
    model = tiny_model("t5")
    pl.attach(model, pl.Compacter(reduction_factor=4, phm_dim=4, **kwargs), name="c")
    return model


def _count_builds(monkeypatch):
    calls = []
    real = phm_bank.kronecker_sums
    monkeypatch.setattr(phm_bank, "kronecker_sums", lambda *a: calls.append(1) or real(*a))
    return calls


def test_one_build_per_layer_shape_per_forward_and_a_new_one_each_forward(monkeypatch):
    model = _compacter()
    calls = _count_builds(monkeypatch)
    model(**tiny_batch("t5"))
    assert len(calls) == 2                       # the 16 -> 4 and 4 -> 16 projections of every layer
    model(**tiny_batch("t5"))
    assert len(calls) == 4


def test_weights_follow_an_optimizer_step_even_without_the_models_forward_hook():
    """generate() calls the encoder on its own: its PHM weights must not be the ones from before the step."""
    model = _compacter()
    batch = tiny_batch("t5")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    model.eval()
    direct = model.encoder(input_ids=batch["input_ids"]).last_hidden_state
    for layer in (m for m in model.modules() if isinstance(m, PHMLinear)):
        layer.bank.clear()
    torch.testing.assert_close(direct, model.encoder(input_ids=batch["input_ids"]).last_hidden_state, rtol=0, atol=0)


def test_a_build_reused_by_two_direct_calls_backpropagates_through_both(monkeypatch):
    model = _compacter()
    calls = _count_builds(monkeypatch)
    model.eval()                              # no dropout: both calls compute the same
    ids = tiny_batch("t5")["input_ids"]
    rule = model.peftlab_adapters["c"].phm_rule.phm_rule
    model.encoder(input_ids=ids).last_hidden_state.pow(2).sum().backward()
    once = rule.grad.clone()
    model.encoder(input_ids=ids).last_hidden_state.pow(2).sum().backward()   # same build: no root forward
    assert len(calls) == 2                    # built once per shape, for the first call only
    torch.testing.assert_close(rule.grad, 2 * once)


def test_a_model_copied_after_a_training_forward_is_independent_and_equal():
    model = _compacter()
    batch = tiny_batch("t5")
    model.train()
    model(**batch).loss.backward()
    twin = copy.deepcopy(model)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(**batch).logits, model(**batch).logits)
        next(p for p in twin.parameters() if p.requires_grad).add_(1.0)
        assert not torch.allclose(twin(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("kwargs", [{}, {"factorized_phm_rule": True}, {"shared_phm_rule": False},
                                    {"shared_W_phm": True}, {"factorized_phm_W": False}])
def test_gradients_match_layer_by_layer_weights(kwargs):
    """The banked model gives the same loss and gradients as one kronecker_sum per layer."""
    model = _compacter(**kwargs)
    for p in model.parameters():
        if p.requires_grad:
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.1)
    batch = tiny_batch("t5")
    model.train()
    torch.manual_seed(0)
    model(**batch).loss.backward()
    banked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for layer in (m for m in model.modules() if isinstance(m, PHMLinear)):
        layer.phm_weight = (lambda l: lambda: kronecker_sum(l.rule.value(), l.blocks.value()))(layer)
    torch.manual_seed(0)
    model(**batch).loss.backward()
    separate = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert banked.keys() == separate.keys() and banked
    for name in banked:
        torch.testing.assert_close(banked[name], separate[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_gives_the_same_gradients(reentrant):
    """Re-run layers take their weights from the bank again (a no-grad first pass when re-entrant)."""
    grads = []
    for checkpointing in (False, True):
        model = _compacter()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(**tiny_batch("t5")).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
