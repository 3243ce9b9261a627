"""Composition blocks against references computed here: Stack, Fuse, WeightedSum, ParallelBlock, Average."""
from __future__ import annotations

import copy

import pytest
import torch

import peftlab as pl
from peftlab import observe
from peftlab.core import attachment_parameters
from peftlab.runtime import Host, get_module
from tiny import tiny_batch, tiny_model


def _inputs(arch="bert", batch=4):
    return {k: v for k, v in tiny_batch(arch, batch=batch).items() if k != "labels"}


@torch.no_grad()
def _perturb(model, names, scale=0.3, seed=3):
    g = torch.Generator().manual_seed(seed)
    for name in names:
        for p in attachment_parameters(model, name):
            p.add_(scale * torch.randn(p.shape, generator=g))


def _logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def _two_adapters(arch="bert", config=None):
    model = tiny_model(arch)
    for name in ("a", "b"):
        pl.attach(model, config or pl.Pfeiffer(reduction_factor=2), name)
    _perturb(model, ["a", "b"])
    return model


def test_stack_equals_applying_a_then_b_reference_hooks():
    model = _two_adapters()
    batch = _inputs()
    reference = copy.deepcopy(model)
    pl.activate(model, pl.Stack("a", "b"))
    stacked = _logits(model, batch)
    # Reference: the bare base with forward hooks that apply a's part, then b's, on each adapted output.
    pl.deactivate(reference)
    for _, slot in list(reference.named_modules()):
        if isinstance(slot, Host) and "a" in slot.parts:
            a, b = slot.parts["a"][0], slot.parts["b"][0]
            slot.base_layer.register_forward_hook(lambda m, i, out, a=a, b=b: b(a(out)))
    torch.testing.assert_close(stacked, _logits(reference, batch), rtol=0, atol=1e-6)
    pl.activate(model, "a")
    assert not torch.allclose(_logits(model, batch), stacked, atol=1e-4)


def test_stack_of_names_equals_the_tuple_activation_with_lora_and_bottleneck():
    model = tiny_model("llama")
    pl.attach(model, pl.LoRA(r=4, slots=("attn.q", "attn.o")), "lora")
    pl.attach(model, pl.Houlsby(reduction_factor=2), "adapter")
    _perturb(model, ["lora", "adapter"])
    batch = _inputs("llama")
    pl.activate(model, "lora", "adapter")
    expected = _logits(model, batch)
    pl.activate(model, pl.Stack("lora", "adapter"))
    torch.testing.assert_close(_logits(model, batch), expected, rtol=0, atol=0)


def _force_fusion_onto(model, fuse_name, chosen_index, n):
    """Query 10 * e0 and keys reading dim 0 make the chosen adapter's +100 on dim 0 win the softmax."""
    with torch.no_grad():
        for _, slot in model.named_modules():
            if isinstance(slot, Host) and fuse_name in slot.parts:
                part = slot.parts[fuse_name][0]
                part.query.weight.zero_(), part.query.bias.zero_(), part.key.weight.zero_(), part.key.bias.zero_()
                part.query.bias[0] = 10.0
                part.key.weight[0, 0] = 1.0


def test_fuse_with_attention_forced_to_one_adapter_equals_that_adapter():
    model = _two_adapters()
    batch = _inputs()
    with torch.no_grad():   # a and b shift dim 0 by +100 / -100 on their outputs
        for _, slot in model.named_modules():
            if isinstance(slot, Host) and "a" in slot.parts:
                slot.parts["a"][0].net.up.bias[0] += 100.0
                slot.parts["b"][0].net.up.bias[0] -= 100.0
    pl.activate(model, "a")
    only_a = _logits(model, batch)
    pl.attach(model, pl.Fuse("a", "b"))
    uniform = _logits(model, batch)
    _force_fusion_onto(model, "fuse_a_b", 0, 2)
    with observe.capture() as seen:
        fused = _logits(model, batch)
    torch.testing.assert_close(fused, only_a, rtol=0, atol=1e-5)
    assert not torch.allclose(uniform, only_a, atol=1e-3)
    series = [k for k in seen if k.startswith("fuse_a_b/")]
    assert len(series) == 2 and seen[series[0]]["labels"] == ["a", "b"]
    torch.testing.assert_close(seen[series[0]]["weights"], torch.tensor([1.0, 0.0]))


def test_fuse_trains_only_the_fusion_and_the_head():
    model = _two_adapters()
    pl.attach(model, pl.Fuse("a", "b"))
    model.train()
    batch = tiny_batch("bert")
    model(**batch).loss.backward()
    fusion = {id(p) for p in attachment_parameters(model, "fuse_a_b")}
    members = {id(p) for name in "ab" for p in attachment_parameters(model, name)}
    for name, p in model.named_parameters():
        if id(p) in members:
            assert not p.requires_grad and p.grad is None, name
        elif id(p) in fusion:
            assert p.requires_grad and p.grad is not None, name
            # a key bias shifts every adapter's score alike, so softmax gives it a zero gradient
            assert name.endswith("key.bias") or p.grad.abs().sum() > 0, name
        else:
            assert p.requires_grad == name.startswith("classifier."), name
    pl.detach(model, "fuse_a_b")   # the block is switched off: nothing is active, nothing trains
    assert not any(p.requires_grad for name in "ab" for p in attachment_parameters(model, name))
    pl.activate(model, "a", "b")   # the members train again once they are active without the fusion
    assert all(p.requires_grad for name in "ab" for p in attachment_parameters(model, name))


def test_fusion_saves_and_loads_with_its_members(tmp_path):
    model = _two_adapters()
    pl.attach(model, pl.Fuse("a", "b"))
    _perturb(model, ["fuse_a_b"], scale=0.5)
    batch = _inputs()
    expected = _logits(model, batch)
    for name in ("a", "b", "fuse_a_b"):
        pl.save(model, tmp_path / name, name)
    fresh = tiny_model("bert")
    for name in ("a", "b", "fuse_a_b"):
        pl.load(fresh, tmp_path / name, name)
    pl.activate(fresh, pl.Fuse("a", "b"))
    torch.testing.assert_close(_logits(fresh, batch), expected, rtol=0, atol=0)


def _weight_sets(model, name="wsum_a_b"):
    return model.peftlab_adapters[name].weight_sets.weights


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("mode", ["weights", "softmax", "gates"])
def test_weighted_sum_with_one_hot_weights_equals_the_chosen_branch(mode, arch):
    model = _two_adapters(arch)
    batch = _inputs(arch)
    expected = {}
    for name in ("a", "b"):
        pl.activate(model, name)
        expected[name] = _logits(model, batch)
    pl.deactivate(model)
    expected["base"] = _logits(model, batch)
    pl.attach(model, pl.WeightedSum("a", "b", mode=mode, num_weight_sets=-1))
    assert _weight_sets(model).shape == (2, 3)   # one set per layer; branches base, a, b
    for index, label in enumerate(["base", "a", "b"]):
        hot = torch.nn.functional.one_hot(torch.tensor(index), 3).float()
        raw = {"weights": hot, "softmax": hot * 200 - 100, "gates": hot * 200 - 100}[mode]
        with torch.no_grad():
            _weight_sets(model).copy_(raw.expand(2, 3))
        torch.testing.assert_close(_logits(model, batch), expected[label], rtol=0, atol=1e-5)


def _sublayer_reference(reference, weights, sources, norms=None):
    """nlprunners' mix written out on each BERT sublayer (BertSelfOutput, BertOutput), by forward hooks:
    Σ_k w_k LN_k(adapter_k(z) + x) + w_base LN(z + x), z = dense(h) (eval: no dropout)."""
    for _, module in list(reference.named_modules()):
        if type(module).__name__ not in ("BertSelfOutput", "BertOutput"):
            continue
        host = module.dropout
        if not isinstance(host, Host):
            continue
        parts = [host.parts[k][0] for k in sources]

        def mix(m, args, out, parts=parts):
            h, x = args
            z = m.dense(h)
            norm = m.LayerNorm
            branches = [norm(z + x)] + [(norms or {}).get(k, norm)(p(z) + x) for k, p in zip(sources, parts)]
            return sum(w * b for w, b in zip(weights, branches))
        module.register_forward_hook(mix)


def test_weighted_sum_on_a_post_norm_encoder_mixes_each_sources_normed_branch():
    """multi_adapter_modeling.py:70-84: each branch through its own LayerNorm, the base through the
    pretrained one; starts as an even mix (softmax of equal logits); one series per layer."""
    model = _two_adapters()
    batch = _inputs()
    reference = copy.deepcopy(model)
    pl.attach(model, pl.WeightedSum("a", "b", num_weight_sets=-1))
    with observe.capture() as seen:
        mixed = _logits(model, batch)
    assert sorted(seen) == ["wsum_a_b/encoder.0", "wsum_a_b/encoder.1"]
    torch.testing.assert_close(seen["wsum_a_b/encoder.0"]["weights"], torch.full((3,), 1 / 3))
    pl.deactivate(reference)
    _sublayer_reference(reference, [1 / 3] * 3, ["a", "b"])
    torch.testing.assert_close(mixed, _logits(reference, batch), rtol=0, atol=1e-5)
    before = copy.deepcopy(model)   # mixing before the norm, LN(z + Σ w_k Δ_k + x), is another function
    pl.deactivate(before)
    for _, slot in list(before.named_modules()):
        if isinstance(slot, Host) and "a" in slot.parts:
            a, b = slot.parts["a"][0], slot.parts["b"][0]
            slot.base_layer.register_forward_hook(lambda m, i, h, a=a, b=b: (h + a(h) + b(h)) / 3)
    assert (mixed - _logits(before, batch)).abs().max() > 1e-4


def test_weighted_sum_on_a_pre_norm_model_mixes_the_sublayer_outputs():
    model = _two_adapters("llama")
    batch = _inputs("llama")
    pl.attach(model, pl.WeightedSum("a", "b"))
    mixed = _logits(model, batch)
    reference = copy.deepcopy(model)
    pl.deactivate(reference)
    for _, slot in list(reference.named_modules()):
        if isinstance(slot, Host) and "a" in slot.parts:
            a, b = slot.parts["a"][0], slot.parts["b"][0]
            slot.base_layer.register_forward_hook(lambda m, i, h, a=a, b=b: (h + a(h) + b(h)) / 3)
    torch.testing.assert_close(mixed, _logits(reference, batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sets,expected_rows", [(1, 1), (-1, 2), (2, 2)])
def test_weighted_sum_weight_sets(sets, expected_rows):
    model = _two_adapters()
    pl.attach(model, pl.WeightedSum("a", "b", num_weight_sets=sets, include_base=False))
    parts = [p for _, p in pl.core.require(model).adapters["wsum_a_b"].parts if hasattr(p, "index")]
    assert _weight_sets(model).shape == (expected_rows, 2)
    assert sorted({p.index for p in parts}) == list(range(expected_rows))
    assert pl.trainable_parameters(model)[0] == expected_rows * 2 + sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("classifier."))


def test_weighted_sum_weight_sets_must_cut_the_layers_evenly():
    """multi_adapter_modeling.py:545 asserts equal chunks: 3 sets of a 2-layer model are refused."""
    model = _two_adapters()
    with pytest.raises(pl.PeftlabError, match="num_weight_sets 3 must divide the model's 2 layers"):
        pl.attach(model, pl.WeightedSum("a", "b", num_weight_sets=3))
    assert "wsum_a_b" not in pl.adapters(model)


def test_weighted_sum_flex_and_train_modes():
    model = _two_adapters()
    batch = _inputs()
    pl.attach(model, pl.WeightedSum("a", "b", include_base=False))
    plain = _logits(model, batch)
    pl.attach(model, pl.WeightedSum("a", "b", flex=True, train_mode="flex", include_base=False, name="flexed"))
    # flex(m) = m + up(gelu(down m)), N(0, 2e-4²) weights: near, not exactly, the identity at the start
    torch.testing.assert_close(_logits(model, batch), plain, rtol=0, atol=1e-3)
    flex = [p for n, p in model.named_parameters() if ".flex." in n]
    assert flex and all(p.requires_grad for p in flex) and flex[0].shape[0] == 64   # nlprunners' size 64
    pl.detach(model, "flexed"), pl.detach(model, "wsum_a_b")
    pl.attach(model, pl.WeightedSum("a", "b", train_mode="full_ft", name="full"))
    assert all(p.requires_grad for p in model.parameters())   # base, members, weights and head
    pl.detach(model, "full")
    pl.attach(model, pl.WeightedSum("a", "b", train_mode="base_ft", name="base_ft"))
    norms = {n for n, p in model.named_parameters() if "LayerNorm" in n and "encoder.layer" in n and p.requires_grad}
    assert not norms   # base_ft keeps the pretrained per-layer norms frozen (multi_adapter_modeling.py:772-776)
    assert model.bert.embeddings.LayerNorm.weight.requires_grad
    pl.detach(model, "base_ft")
    base = [p for n, p in model.named_parameters() if n.startswith("bert.") and ".parts." not in n]
    assert base and not any(p.requires_grad for p in base)
    with pytest.raises(pl.PeftlabError, match="train_mode 'flex' needs flex=True"):
        pl.WeightedSum("a", "b", train_mode="flex")
    with pytest.raises(pl.PeftlabError, match="set include_base=false"):
        pl.WeightedSum("a", "b", flex=True, train_mode="flex")


def test_parallel_block_rows_equal_separate_runs():
    model = _two_adapters()
    batch = _inputs(batch=3)
    separate = []
    for name in ("a", "b"):
        pl.activate(model, name)
        separate.append(_logits(model, batch))
    pl.activate(model, pl.ParallelBlock("a", "b"))
    both = _logits(model, batch)
    assert both.shape[0] == 6
    torch.testing.assert_close(both[:3], separate[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[3:], separate[1], rtol=0, atol=1e-6)


def test_average_of_bottlenecks_averages_every_tensor():
    model = _two_adapters()
    pl.attach(model, pl.Average("a", "b", weights=[0.25, 0.75], name="avg"))
    from peftlab.io import adapter_state
    states = {n: adapter_state(model, n) for n in ("a", "b", "avg")}
    for key, value in states["avg"].items():
        if not key.startswith("base."):
            torch.testing.assert_close(value, 0.25 * states["a"][key] + 0.75 * states["b"][key])
    assert pl.core.require(model).active == ("avg",)


def test_average_of_loras_is_the_average_update():
    model = tiny_model("llama")
    pl.attach(model, pl.LoRA(r=2, alpha=4), "a")
    pl.attach(model, pl.LoRA(r=4, alpha=4), "b")
    _perturb(model, ["a", "b"])
    pl.attach(model, pl.Average("a", "b", weights=[0.3, 0.7], name="avg"))
    parts = {n: [p for _, p in pl.core.require(model).adapters[n].parts] for n in ("a", "b", "avg")}
    assert parts["avg"][0].lora_A.weight.shape[0] == 6
    for pa, pb, pv in zip(parts["a"], parts["b"], parts["avg"]):
        torch.testing.assert_close(pv.delta_weight(), 0.3 * pa.delta_weight() + 0.7 * pb.delta_weight())
    assert pl.core.require(model).active == ("avg",)


def test_detaching_everything_restores_the_model_bit_for_bit():
    model = tiny_model("llama")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("a", "b"):
        pl.attach(model, pl.Pfeiffer(reduction_factor=2), name)
    pl.attach(model, pl.WeightedSum("a", "b", flex=True, train_mode="base_ft"))
    model(**_inputs("llama"), adapter_names=["a", "b", "__base__", "a"])
    pl.attach(model, pl.Fuse("a", "b"))
    for name in list(pl.adapters(model)):
        pl.detach(model, name)
    assert not model._forward_pre_hooks and not model._forward_hooks and "generate" not in model.__dict__
    after = model.state_dict()
    assert list(after) == list(original) and all(torch.equal(after[k], v) for k, v in original.items())
    assert not any(isinstance(m, Host) for m in model.modules())
    assert get_module(model, "model.layers.0.mlp.down_proj").__class__.__name__ == "Linear"


def test_parallel_block_in_generate_gives_each_member_its_copy_of_the_batch():
    model = _two_adapters("llama", pl.Houlsby(reduction_factor=2))
    ids = tiny_batch("llama", batch=2)["input_ids"]
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    separate = []
    for name in ("a", "b"):
        pl.activate(model, name)
        separate.append(model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs))
    assert not torch.equal(separate[0], separate[1])
    pl.activate(model, pl.ParallelBlock("a", pl.Stack("b")))
    both = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert torch.equal(both, torch.cat(separate))


def test_activating_a_fusion_that_was_not_created_says_how_to_create_it():
    model = _two_adapters()
    before = pl.core.require(model).active
    with pytest.raises(pl.PeftlabError, match=r"no fusion adapter 'fuse_a_b' is attached: create it first "
                                              r"with pl.attach\(model, Fuse\('a', 'b'"):
        pl.activate(model, pl.Fuse("a", "b"))
    with pytest.raises(pl.PeftlabError, match=r"an Average creates a new adapter: pl.attach"):
        pl.activate(model, pl.Average("a", "b"))
    assert pl.core.require(model).active == before and "fuse_a_b" not in pl.adapters(model)
    pl.attach(model, pl.Fuse("a", "b"), activate=False)          # explicit creation, then activation
    pl.activate(model, pl.Fuse("a", "b"))
    assert pl.core.require(model).active == pl.Fuse("a", "b")
