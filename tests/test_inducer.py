"""Inducer-tuning against an explicit softmax over the score matrix extended by the inducer column."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.methods.inducer import Inducer, InducerLoRA, InducerMAM, SliceLoRA
from peftlab.methods.lora import LoRA, LoRAPart
from peftlab.methods.bottleneck import Parallel
from test_kernel import CASES, Layer, assert_changed, assert_generate_matches_forward, batch_for, lively_model, \
    perturb, reference_attention
from tiny import tiny_model


def extension_of(model, name: str, layer: Layer):
    return model.peftlab_adapters[name].attention[layer.attn.replace(".", "-")]


def explicit_inducer(ext):
    """The inducer written out per head: k* = q + MLP_k(q), the extended softmax, then MLP_v."""

    def mlp(x, A, a, B, b):
        return torch.tanh(x @ A + a) @ B + b

    def run(q, scores, scaling, probs):
        heads = q.shape[1]
        s0 = torch.stack([(q[:, h] * (q[:, h] + mlp(q[:, h], ext.key_A[h], ext.key_a[h], ext.key_B[h],
                                                      ext.key_b[h]))).sum(-1) * scaling
                          for h in range(heads)], dim=1)                                  # (b, h, n)
        extended = torch.softmax(torch.cat([s0[..., None], scores], dim=-1), dim=-1)     # inducer column first
        w = extended[..., 0]
        if ext.joint_softmax:
            probs = extended[..., 1:]
        if ext.value_extension:
            out_term = sum(w[:, h, :, None] * (torch.tanh(q[:, h] @ ext.value_A[h] + ext.value_a[h]) @ ext.value_B[h])
                           for h in range(heads)) + ext.value_b
            return probs, w, None, out_term
        head_term = torch.stack([mlp(q[:, h], ext.value_A[h], ext.value_a[h], ext.value_B[h], ext.value_b[h])
                                 for h in range(heads)], dim=1)
        return probs, w, head_term, None
    return run


@pytest.mark.parametrize("value_extension,joint", [(True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("arch,stack", CASES)
def test_inducer_matches_explicit_extended_softmax(arch, stack, value_extension, joint):
    model = lively_model(arch)
    pl.attach(model, Inducer(rank_k=3, rank_v=5, prefix_value_extension=value_extension, joint_softmax=joint),
              name="i")
    perturb(model, "i")
    layer, batch = Layer(model, stack), batch_for(arch)
    seen = layer.run(batch)
    expected = reference_attention(layer, seen, batch, inducer=explicit_inducer(extension_of(model, "i", layer)))
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=1e-5)
    assert_changed(expected, reference_attention(layer, seen, batch))


def _lora_query_edit(layer: Layer, name: str):
    parts = [p for path in layer.qkv for p in layer.parts(name, path, (SliceLoRA, LoRAPart))]
    assert len(parts) == 1   # the query only, also inside GPT-2's fused projection
    lora = parts[0].lora if isinstance(parts[0], SliceLoRA) else parts[0]

    def edit(q, k, x):
        delta = lora.scaling * (x @ lora.lora_A.weight.T @ lora.lora_B.weight.T)
        return q + delta.view(q.shape), k
    return edit


@pytest.mark.parametrize("arch,stack", [("gpt2", "decoder"), ("llama", "decoder"), ("t5", "decoder"),
                                        ("bert", "encoder")])
def test_inducer_with_lora_on_the_query_matches_reference(arch, stack):
    model = lively_model(arch)
    pl.attach(model, InducerLoRA(rank_k=2, rank_v=3, lora=LoRA(r=3, alpha=6.0, slots=("attn.q",))), name="i")
    perturb(model, "i")
    layer, batch = Layer(model, stack), batch_for(arch)
    seen = layer.run(batch)
    expected = reference_attention(layer, seen, batch, q_edit=_lora_query_edit(layer, "i"),
                                   inducer=explicit_inducer(extension_of(model, "i", layer)))
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["t5", "bart", "bert", "roberta", "gpt2", "llama"])
def test_inducer_at_init_is_the_small_perturbation_its_init_implies(arch):
    """Every inducer tensor is N(0, 0.01^2) truncated at 0.02, so with |tanh| <= 1 and w <= 1 the output
    projection's output moves by at most 0.02 (rank_v * heads + 1) per channel (value extension)."""
    model, batch = tiny_model(arch), batch_for(arch)
    layer = Layer(model, "decoder" if arch in ("gpt2", "llama") else "encoder")
    before = layer.run(batch)["out"]
    with torch.no_grad():
        logits = model(**batch).logits
    config = Inducer(rank_k=4, rank_v=6)
    pl.attach(model, config, name="i")
    after = Layer(model, layer.stack).run(batch)["out"]
    heads = model.config.num_attention_heads
    change = (after - before).abs().max().item()
    assert 0 < change <= 0.02 * (config.rank_v * heads + 1)
    # measured: the shares w are small at init, so the move is about the output bias b alone (<= 0.02)
    assert change < 0.03
    with torch.no_grad():
        assert not torch.equal(model(**batch).logits, logits)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("config", [
    Inducer(rank_k=3, rank_v=4),
    Inducer(rank_k=3, rank_v=4, prefix_value_extension=False, joint_softmax=True),
    InducerLoRA(rank_k=2, rank_v=3, lora=LoRA(r=2, alpha=4.0, slots=("attn.q",))),
    InducerMAM(rank_k=2, rank_v=3, lora=LoRA(r=2, alpha=4.0, slots=("attn.q",)),
               parallel_adapter=Parallel(bottleneck_size=4, adapter_layernorm_before=True, scaling=1.0)),
], ids=["inducer", "inducer_joint_no_extension", "inducer_lora", "inducer_mam"])
def test_generate_equals_stepwise_forward_without_cache(arch, config):
    model = tiny_model(arch)
    pl.attach(model, config, name="a")
    perturb(model, "a", scale=0.2)
    assert_generate_matches_forward(model)


@pytest.mark.parametrize("kwargs,field", [({"rank_k": 0}, "rank_k"), ({"rank_v": -3}, "rank_v")])
def test_inducer_rejects_non_positive_ranks(kwargs, field):
    with pytest.raises(pl.PeftlabError, match=f"Inducer.{field} must be positive"):
        Inducer(**kwargs)
    with pytest.raises(pl.PeftlabError, match=r"InducerLoRA.lora: LoRA.r must be positive, got 0"):
        InducerLoRA(lora={"r": 0})
    with pytest.raises(pl.PeftlabError, match="LoRA.r must be positive"):
        InducerLoRA(lora=LoRA(r=0))


def test_inducer_rejects_a_serial_adapter_and_nested_switches():
    with pytest.raises(pl.PeftlabError, match="parallel_adapter must have parallel=True"):
        Inducer(parallel_adapter=Parallel(parallel=False))
    with pytest.raises(pl.PeftlabError, match="InducerLoRA.lora.unfreeze_lm_head: set unfreeze_lm_head on InducerLoRA"):
        InducerLoRA(lora=LoRA(unfreeze_lm_head=True))


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention"])
def test_unsupported_attention_implementation_is_a_clear_error_and_changes_nothing(implementation):
    model = tiny_model("llama")
    model.config._attn_implementation_internal = implementation
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match=f"attention implementation '{implementation}'"):
        pl.attach(model, Inducer(), name="i")
    assert not hasattr(model, "_peftlab") and not hasattr(model, "peftlab_adapters")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.config._attn_implementation_internal == implementation


def test_head_count_not_dividing_the_width_is_a_clear_error():
    model = tiny_model("gpt2")
    model.config.num_attention_heads = 3
    with pytest.raises(pl.PeftlabError, match="3 attention heads do not divide the 16 features"):
        pl.attach(model, Inducer(), name="i")
    assert not hasattr(model, "_peftlab")


def test_config_round_trips_with_nested_lora_and_adapter(tmp_path):
    config = InducerMAM()
    again = pl.config_from_dict(config.to_dict())
    assert again == config and isinstance(again, InducerMAM)
    assert again.lora.r == 16 and again.parallel_adapter.reduction_factor == 18.2
    model = tiny_model("gpt2")
    pl.attach(model, InducerMAM(lora=LoRA(r=2, slots=("attn.q",)), parallel_adapter=Parallel(bottleneck_size=2)),
              name="m")
    perturb(model, "m")
    batch = batch_for("gpt2")
    with torch.no_grad():
        expected = model(**batch).logits
    pl.save(model, tmp_path / "m")
    fresh = tiny_model("gpt2")
    pl.load(fresh, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, expected)
