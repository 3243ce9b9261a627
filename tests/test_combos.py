"""MAM and UniPELT: one config and one name for modules that equal the separate methods, plus gates."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.io import adapter_state
from peftlab.methods.combos import Gate, MAM, UniPELT
from test_kernel import Layer, assert_changed, assert_generate_matches_forward, batch_for, lively_model, perturb, \
    reference_attention
from tiny import ARCHS, tiny_model

PREFIX = pl.PrefixTuning(prefix_length=3, mlp_hidden=8)
LORA = pl.LoRA(r=2, alpha=4.0, slots=("attn.q", "attn.v"))


def _mam() -> MAM:
    return MAM(prefix=PREFIX, adapter=pl.Parallel(bottleneck_size=4))


def _unipelt(gates: bool = True) -> UniPELT:
    return UniPELT(lora=LORA, prefix=PREFIX, adapter=pl.Pfeiffer(bottleneck_size=4), gates=gates)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@torch.no_grad()
def _copy_into(model, combined: str, names: list[str]) -> None:
    """Copy the combination's tensors into separately attached adapters holding the same keys; together
    they must hold every tensor of the combination."""
    source = adapter_state(model, combined)
    covered = set()
    for name in names:
        for key, tensor in adapter_state(model, name).items():
            tensor.copy_(source[key])
            covered.add(key)
    assert covered == set(source)


@pytest.mark.parametrize("arch", ARCHS)
def test_mam_equals_prefix_tuning_plus_parallel_adapter(arch):
    model, batch = tiny_model(arch), batch_for(arch)
    pl.attach(model, _mam(), name="mam")
    perturb(model, "mam", scale=0.2)
    expected = _logits(model, batch)
    pl.attach(model, PREFIX, name="p", activate=False)
    pl.attach(model, pl.Parallel(bottleneck_size=4), name="a", activate=False)
    _copy_into(model, "mam", ["p", "a"])
    pl.activate(model, "p", "a")
    torch.testing.assert_close(_logits(model, batch), expected, rtol=0, atol=1e-6)
    pl.activate(model, "p")
    assert (_logits(model, batch) - expected).abs().max() > 1e-4   # the adapter part matters


@pytest.mark.parametrize("arch", ["t5", "bart", "bert", "llama"])
def test_unipelt_without_gates_equals_lora_plus_prefix_plus_adapter(arch):
    model, batch = tiny_model(arch), batch_for(arch)
    pl.attach(model, _unipelt(gates=False), name="u")
    perturb(model, "u", scale=0.2)
    expected = _logits(model, batch)
    for name, config in (("l", LORA), ("p", PREFIX), ("a", pl.Pfeiffer(bottleneck_size=4))):
        pl.attach(model, config, name=name, activate=False)
    _copy_into(model, "u", ["l", "p", "a"])
    pl.activate(model, "l", "p", "a")
    torch.testing.assert_close(_logits(model, batch), expected, rtol=0, atol=1e-6)


@torch.no_grad()
def _set_gates(model, name: str, bias: float) -> None:
    for module in model.modules():
        if isinstance(module, Gate):
            module.linear.weight.zero_()
            module.linear.bias.fill_(bias)


@pytest.mark.parametrize("arch", ["t5", "bart", "bert", "roberta", "gpt2", "llama"])
def test_unipelt_gates_open_equal_the_ungated_union_and_shut_equal_the_base(arch):
    model, batch = tiny_model(arch), batch_for(arch)
    shifted = dict(batch)
    if arch in ("gpt2", "llama"):   # the prefix puts real tokens at positions m, m+1, ... (shift_positions)
        shifted["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None] + PREFIX.prefix_length
    base = _logits(model, shifted)
    pl.attach(model, _unipelt(gates=True), name="u")
    pl.attach(model, _unipelt(gates=False), name="plain", activate=False)
    perturb(model, "u", scale=0.2)
    _copy_into_matching(model, "u", "plain")
    pl.activate(model, "plain")
    ungated = _logits(model, batch)
    pl.activate(model, "u")
    half_open = _logits(model, batch)
    _set_gates(model, "u", 40.0)
    torch.testing.assert_close(_logits(model, batch), ungated, rtol=0, atol=1e-5)
    _set_gates(model, "u", -40.0)
    torch.testing.assert_close(_logits(model, batch), base, rtol=0, atol=1e-5)
    assert (half_open - ungated).abs().max() > 1e-4 and (half_open - base).abs().max() > 1e-4


@torch.no_grad()
def _copy_into_matching(model, source_name: str, target_name: str) -> None:
    """Copy UniPELT's module tensors (not its gates) into an ungated UniPELT of the same shapes."""
    source = [p for n, p in _named(model, source_name) if ".gate." not in n and "gate.linear" not in n]
    target = [p for _, p in _named(model, target_name)]
    assert [p.shape for p in source] == [p.shape for p in target]
    for s, t in zip(source, target):
        t.copy_(s)


def _named(model, name: str):
    state = adapter_state(model, name)
    return sorted(((k.replace(".inner.", "."), v) for k, v in state.items()), key=lambda kv: kv[0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("config", [_mam(), _unipelt(), _unipelt(gates=False)],
                         ids=["mam", "unipelt", "unipelt_no_gates"])
def test_generate_equals_stepwise_forward_without_cache(arch, config):
    model = tiny_model(arch)
    pl.attach(model, config, name="c")
    perturb(model, "c", scale=0.2)
    assert_generate_matches_forward(model)


def test_gates_train():
    model = tiny_model("gpt2")
    pl.attach(model, _unipelt(), name="u")
    perturb(model, "u", scale=0.2)   # LoRA's B starts at zero, which leaves its gate without a gradient
    model.train()
    model(**batch_for("gpt2")).loss.backward()
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    assert len(gates) == 2 * 2 + 2 + 2   # per layer: LoRA on q and v, the prefix, the adapter
    assert all(g.linear.weight.grad is not None and g.linear.weight.grad.abs().sum() > 0 for g in gates)


def test_counts_are_the_sum_of_the_parts():
    model = tiny_model("llama")
    expected = 0
    for config in (LORA, PREFIX, pl.Pfeiffer(bottleneck_size=4)):
        pl.attach(model, config, name="x")
        expected += pl.trainable_parameters(model)[0]
        pl.detach(model, "x")
    pl.attach(model, _unipelt(gates=False), name="u")
    assert pl.trainable_parameters(model)[0] == expected
    pl.detach(model, "u")
    pl.attach(model, _unipelt(), name="u")
    gates = (2 * 2 + 2) * (16 + 1) + 2 * (16 + 1)   # LoRA q, v and prefix gates read 16 features; adapter 16
    assert pl.trainable_parameters(model)[0] == expected + gates


def test_bad_combinations_are_clear_errors():
    with pytest.raises(pl.PeftlabError, match="MAM.adapter must be a parallel adapter"):
        MAM(adapter=pl.Parallel(parallel=False))
    with pytest.raises(pl.PeftlabError, match="UniPELT.adapter must be sequential"):
        UniPELT(adapter=pl.Pfeiffer(parallel=True))
    with pytest.raises(pl.PeftlabError, match="UniPELT.lora.unfreeze_layer_norms: set unfreeze_layer_norms on UniPELT"):
        UniPELT(lora=pl.LoRA(unfreeze_layer_norms=True))
    with pytest.raises(pl.PeftlabError, match="prefix_length must be >= 1"):
        MAM(prefix=pl.PrefixTuning(prefix_length=0))


@pytest.mark.parametrize("config", [_mam(), _unipelt()], ids=["mam", "unipelt"])
def test_unsupported_attention_is_a_clear_error_and_changes_nothing(config):
    model = tiny_model("gpt2")
    model.config._attn_implementation_internal = "flash_attention_2"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match="attention implementation 'flash_attention_2'"):
        pl.attach(model, config, name="c")
    assert not hasattr(model, "_peftlab") and set(model.state_dict()) == set(state)


def test_config_round_trip():
    for config in (MAM(), UniPELT(), _unipelt(gates=False)):
        again = pl.config_from_dict(config.to_dict())
        assert again == config and type(again) is type(config)


@pytest.mark.parametrize("arch,stack", [("gpt2", "decoder"), ("llama", "decoder"), ("bert", "encoder"),
                                        ("bart", "encoder"), ("bart", "decoder")])
def test_unipelt_prefix_gate_matches_explicit_softmax_with_log_gate_on_prefix_columns(arch, stack):
    model = lively_model(arch)
    pl.attach(model, UniPELT(lora=LORA, prefix=pl.PrefixTuning(prefix_length=3, flat=True),
                             adapter=pl.Pfeiffer(bottleneck_size=4)), name="u")
    layer, batch = Layer(model, stack), batch_for(arch)
    gated = model.peftlab_adapters["u"].attention[layer.attn.replace(".", "-")]
    params = model.peftlab_adapters["u"].prefix
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():   # LoRA keeps its zero B (no change inside attention); prefix and its gate move
        params.embedding.copy_(torch.randn(params.embedding.shape, generator=g))
        gated.gate.linear.weight.copy_(torch.randn(gated.gate.linear.weight.shape, generator=g))
        gated.gate.linear.bias.fill_(0.3)
    seen = layer.run(batch)

    def prefix(x):
        keys, values = params.layer_kv(gated.inner.layer)
        gate = torch.sigmoid(x @ gated.gate.linear.weight.T + gated.gate.linear.bias)     # (b, n, 1)
        return keys, values, torch.log(gate).unsqueeze(1)

    expected = reference_attention(layer, seen, batch, prefix=prefix)
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=1e-5)
    ungated = reference_attention(layer, seen, batch, prefix=lambda x: (*prefix(x)[:2], 0.0))
    assert_changed(expected, ungated)


@pytest.mark.parametrize("method", [lambda: pl.LoRA(r=4), lambda: pl.IA3()])
def test_merge_unmerge_detach_restores_the_weights_bit_for_bit(method):
    model = tiny_model("llama")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pl.attach(model, method(), name="a")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.37)       # a trained-looking update, not exactly representable
    pl.merge(model, "a")
    pl.unmerge(model, "a")
    pl.merge(model, "a")
    pl.detach(model, "a")                                   # detach unmerges first
    after = model.state_dict()
    assert list(after) == list(original) and all(torch.equal(after[k], v) for k, v in original.items())
