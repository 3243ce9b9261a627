"""The shared attention hook (peftlab.attention): pass-through, prefixes, masks, eager = sdpa, undo."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import peftlab as pl
from peftlab import attention
from peftlab.config import MethodConfig
from peftlab.registry import register_method, unregister_method
from tiny import ARCHS, tiny_batch, tiny_model


class _Nothing(attention.AttentionExtension):
    def before(self, call):
        self.seen = True


class _OneKey(attention.AttentionExtension):
    """Prepends one fixed key/value pair per layer (a prefix of length 1)."""

    def __init__(self, heads, head_dim):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.k = torch.nn.Parameter(torch.randn(1, heads, 1, head_dim, generator=g))
        self.v = torch.nn.Parameter(torch.randn(1, heads, 1, head_dim, generator=g))

    def before(self, call):
        call.prepend_kv(self.k, self.v)


@dataclass
class _Probe(MethodConfig):
    kind: str = "nothing"


def _kv_shape(model):
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or getattr(c, "num_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "d_kv", None) or c.hidden_size // c.num_attention_heads
    return heads, head_dim


def _build(target, kind):
    for site in attention.attention_sites(target):
        ext = _Nothing() if kind == "nothing" else _OneKey(*_kv_shape(target.model))
        attention.install(target, site, ext)


@pytest.fixture(scope="module", autouse=True)
def _probe_method():
    register_method("attention_probe", _Probe, _build)
    yield
    unregister_method("attention_probe")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_pass_through_extension_changes_nothing_and_detach_restores(arch):
    model, batch = tiny_model(arch), tiny_batch(arch)
    before = _logits(model, batch)
    pl.attach(model, _Probe(train_head=False), "a")
    assert model.config._attn_implementation == "peftlab_sdpa"
    torch.testing.assert_close(_logits(model, batch), before, rtol=0, atol=0)
    pl.detach(model)
    assert model.config._attn_implementation == "sdpa"
    assert all("_peftlab_attention" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_changes_outputs_only_while_active_and_eager_equals_sdpa(arch):
    model, batch = tiny_model(arch), tiny_batch(arch)
    before = _logits(model, batch)
    pl.attach(model, _Probe(kind="key", train_head=False), "a")
    with_key = _logits(model, batch)
    assert (with_key - before).abs().max() > 1e-6
    pl.deactivate(model)
    torch.testing.assert_close(_logits(model, batch), before, rtol=0, atol=0)
    pl.activate(model, "a")
    eager = tiny_model(arch)
    for config in {id(m.config): m.config for m in eager.modules() if hasattr(m, "config")}.values():
        config._attn_implementation = "eager"
    pl.attach(eager, _Probe(kind="key", train_head=False), "a")
    assert eager.config._attn_implementation == "peftlab_eager"
    torch.testing.assert_close(_logits(eager, batch), with_key, rtol=0, atol=1e-5)


def test_prefix_key_gets_the_expected_attention_share():
    """One prefix key whose score is 0 against every query and whose value is v*: each output row of
    attention becomes (Z·out + v*) / (Z + 1), Z the softmax normaliser; checked against a direct sum."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    module = torch.nn.Module()
    module.is_causal = False
    call = attention.AttentionCall(module, q, k, v, None, {"scaling": 0.5}, sdpa_attention_forward)
    v_star = torch.randn(1, 2, 1, 4)
    call.prepend_kv(torch.zeros(1, 2, 1, 4), v_star)
    out, _ = call.run()
    scores = torch.cat([torch.zeros(1, 2, 3, 1), q @ k.transpose(-1, -2) * 0.5], dim=-1).softmax(-1)
    expected = (scores @ torch.cat([v_star, v], dim=2)).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_causal_mask_is_spelled_out_when_the_model_passes_none():
    module = torch.nn.Module()
    module.is_causal = True
    q = k = v = torch.randn(1, 1, 3, 2)
    call = attention.AttentionCall(module, q, k, v, None, {}, None)
    call.prepend_kv(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(call.attention_mask[0, 0], expected)


def test_unwrappable_attention_implementation_is_refused_and_model_unchanged():
    model = tiny_model("gpt2")
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(pl.PeftlabError, match="flash_attention_2"):
        pl.attach(model, _Probe(train_head=False), "a")
    assert model.config._attn_implementation == "flash_attention_2"
    assert not hasattr(model, "_peftlab")


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_two_adapters_on_one_attention_detach_in_any_order(arch):
    """The first adapter leaving must not take the second one's hook or config switch with it."""
    model, batch = tiny_model(arch), tiny_batch(arch)
    before = _logits(model, batch)
    only_b = tiny_model(arch)
    pl.attach(only_b, pl.PrefixTuning(prefix_length=2, flat=True, train_head=False), "b")
    pl.attach(model, _Probe(kind="key", train_head=False), "a")
    pl.attach(model, pl.PrefixTuning(prefix_length=2, flat=True, train_head=False), "b")
    with torch.no_grad():
        model.peftlab_adapters["b"].prefix.embedding.copy_(only_b.peftlab_adapters["b"].prefix.embedding)
    pl.detach(model, "a")
    assert model.config._attn_implementation == "peftlab_sdpa"
    torch.testing.assert_close(_logits(model, batch), _logits(only_b, batch), rtol=0, atol=0)
    pl.detach(model, "b")
    assert model.config._attn_implementation == "sdpa"
    assert all("_peftlab_attention" not in m.__dict__ for m in model.modules())
    torch.testing.assert_close(_logits(model, batch), before, rtol=0, atol=0)
