"""Kernel adapter and kernel-mix against attention computed explicitly in the test, on every architecture.

The reference recomputes one self-attention layer from its captured input with the base projections,
the method's tensors and an explicit softmax (`reference_attention`); `tests/test_inducer.py` reuses it.
"""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import peftlab as pl
from peftlab.core import attachment_parameters
from peftlab.layouts import layout_for
from peftlab.methods.kernel import FusedMixPart, KernelAdapter, KernelMix, KernelScalePart, OutputMix, QueryMix, \
    ValueMix
from peftlab.state import controller_of
from peftlab.runtime import base_module, get_module
from peftlab.targeting import LayerSelection, resolve_slot
from tiny import VOCAB, tiny_batch, tiny_model

# (arch, stack): T5 and BART are checked in both stacks (bidirectional encoder, causal decoder).
CASES = [("gpt2", "decoder"), ("llama", "decoder"), ("bert", "encoder"), ("roberta", "encoder"),
         ("t5", "encoder"), ("t5", "decoder"), ("bart", "encoder"), ("bart", "decoder")]
LAYER = 1


# --- capturing one layer and recomputing it --------------------------------------------------------

class Layer:
    """Paths of one layer's attention pieces, and what its attention saw in a forward."""

    def __init__(self, model, stack: str, layer: int = LAYER):
        self.model, self.stack, self.layer = model, stack, layer
        self.layout = layout_for(model)
        self.fused = bool(self.layout.attention.get("fused_qkv"))
        self.attn = self.path("attn")
        self.o = self.path("attn.o")
        self.qkv = [self.path("attn.qkv")] if self.fused else [self.path(f"attn.{k}") for k in "qkv"]

    def path(self, slot: str) -> str:
        return resolve_slot(self.model, self.layout, slot, LayerSelection(layers=(self.layer,)), [self.stack])[0].path

    def base(self, path: str):
        return base_module(get_module(self.model, path))

    def run(self, batch: dict):
        """Forward the model; keep the attention module's input and the output projection's output."""
        seen = {}

        def grab_input(module, args, kwargs):
            seen["x"] = args[0] if args else kwargs["hidden_states"]
            seen["kwargs"] = kwargs

        def grab_output(module, args, output):
            seen["out"] = output[0] if isinstance(output, tuple) else output

        handles = [get_module(self.model, self.attn).register_forward_pre_hook(grab_input, with_kwargs=True),
                   get_module(self.model, self.o).register_forward_hook(grab_output)]
        try:
            with torch.no_grad():
                self.model(**batch)
        finally:
            for handle in handles:
                handle.remove()
        return seen

    def parts(self, name: str, path: str, kind):
        return [p for at, p in controller_of(self.model).adapters[name].parts if at == path and isinstance(p, kind)]


def heads_of(model) -> tuple[int, int]:
    config = model.config
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads


def key_mask(model, stack: str, batch: dict, n: int) -> torch.Tensor:
    """(batch, 1, n, n) booleans: True where a query may attend, from the padding mask and causality."""
    seq2seq = model.config.is_encoder_decoder
    pad = batch["attention_mask"].bool() if stack == "encoder" or not seq2seq else torch.ones(
        batch["input_ids"].shape[0], n, dtype=torch.bool)
    causal = layout_for(model).stacks[stack].causal
    allowed = pad[:, None, None, :].expand(-1, 1, n, n)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    return allowed


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def t5_position_bias(layer: Layer, kwargs: dict, n: int) -> torch.Tensor:
    """The relative-position bias T5 adds to the scores: computed by layer 0, handed to the others."""
    bias = kwargs.get("position_bias")
    return layer.base(layer.attn).compute_bias(n, n) if bias is None else bias


def reference_attention(layer: Layer, seen: dict, batch: dict, q_edit=None, v_edit=None, o_edit=None,
                        inducer=None, prefix=None) -> torch.Tensor:
    """The output projection's output, recomputed explicitly from the captured attention input.

    q_edit(q, k, x) -> (q, k) and v_edit(v, k, x) -> v act per head on (b, n, heads, d_h) before rotary
    embeddings; o_edit(merged) -> delta added to W_o's output; inducer(q, scores, scaling, probs) ->
    (probs applied to the values, w (b, h, n), head_term (b, h, n, d) or None, out_term (b, n, d) or None);
    prefix(x) -> (keys, values (1, kv_heads, m, d), bias (b, 1, n, 1) on the prefix columns of the scores)."""
    model, x, kwargs = layer.model, seen["x"], seen["kwargs"]
    heads, kv_heads = heads_of(model)
    with torch.no_grad():
        if layer.fused:
            q, k, v = layer.base(layer.qkv[0])(x).chunk(3, dim=-1)
        else:
            q, k, v = (layer.base(p)(x) for p in layer.qkv)
        b, n = x.shape[:2]
        q, k, v = q.view(b, n, heads, -1), k.view(b, n, kv_heads, -1), v.view(b, n, kv_heads, -1)
        if v_edit is not None:
            v = v_edit(v, k, x)
        if q_edit is not None:
            q, k = q_edit(q, k, x)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if "position_embeddings" in kwargs:
            cos, sin = kwargs["position_embeddings"]
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        allowed = key_mask(model, layer.stack, batch, n)
        if prefix is not None:   # prefix keys/values (1, kv_heads, m, d) and a bias on their columns
            pk, pv, column_bias = prefix(x)
            k, v = torch.cat([pk.expand(b, -1, -1, -1), k], 2), torch.cat([pv.expand(b, -1, -1, -1), v], 2)
            allowed = torch.cat([torch.ones(b, 1, n, pk.shape[2], dtype=torch.bool), allowed], dim=-1)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
        scaling = 1.0 if model.config.model_type == "t5" else q.shape[-1] ** -0.5
        scores = q @ k.transpose(-1, -2) * scaling
        if prefix is not None:
            m = pk.shape[2]
            scores = torch.cat([scores[..., :m] + column_bias, scores[..., m:]], dim=-1)
        if model.config.model_type == "t5":
            scores = scores + t5_position_bias(layer, kwargs, n)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs, w, head_term, out_term = torch.softmax(scores, dim=-1), None, None, None
        if inducer is not None:
            probs, w, head_term, out_term = inducer(q, scores, scaling, probs)
        head_out = probs @ v
        if head_term is not None:
            head_out = head_out + w[..., None] * head_term
        merged = head_out.transpose(1, 2).reshape(b, n, -1)
        out = layer.base(layer.o)(merged)
        if o_edit is not None:
            out = out + o_edit(merged)
        return out if out_term is None else out + out_term


@torch.no_grad()
def perturb(model, name: str, scale: float = 0.3, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in attachment_parameters(model, name):
        p.add_(scale * torch.randn(p.shape, generator=g))


@torch.no_grad()
def lively_model(arch: str):
    """A tiny model whose weights are N(0, 0.3^2): tiny GPT-2's 0.02 init leaves attention outputs near
    1e-3, where an absolute tolerance of 1e-5 would prove little."""
    model = tiny_model(arch)
    g = torch.Generator().manual_seed(11)
    for p in model.parameters():
        if p.dim() >= 2:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def assert_changed(a: torch.Tensor, b: torch.Tensor) -> None:
    """The method really changed the layer (so the equality checked before it is not vacuous)."""
    assert (a - b).abs().max() > 1e-2


def batch_for(arch: str) -> dict:
    batch = tiny_batch(arch)
    if arch in ("bert", "roberta"):
        batch.pop("labels")
    return batch


def greedy_by_forward(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by re-running the whole prefix each step, without any cache."""
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def assert_generate_matches_forward(model, steps: int = 6) -> None:
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                                   min_new_tokens=steps, do_sample=False, num_beams=1)
    assert torch.equal(generated, greedy_by_forward(model, ids, steps))


# --- KernelAdapter -----------------------------------------------------------------------------------

def _bandwidth_edit(layer: Layer, name: str):
    parts = [p for path in layer.qkv for p in layer.parts(name, path, KernelScalePart)]
    scales = {kind: s for part in parts for kind, s in part.scales.items()}

    def edit(q, k, x):
        out = []
        for kind, t in (("q", q), ("k", k)):
            scale = scales.get(kind)
            if scale is not None:
                t = (t + (scale.bias if scale.bias is not None else 0)) * scale.bandwidth
            out.append(t)
        return tuple(out)
    return edit


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("arch,stack", CASES)
def test_kernel_adapter_matches_explicit_bandwidth_scaled_attention(arch, stack, per_head):
    model = lively_model(arch)
    pl.attach(model, KernelAdapter(per_head=per_head, query_bias=True), name="k")
    perturb(model, "k")
    layer, batch = Layer(model, stack), batch_for(arch)
    seen = layer.run(batch)
    expected = reference_attention(layer, seen, batch, q_edit=_bandwidth_edit(layer, "k"))
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=1e-5)
    assert_changed(expected, reference_attention(layer, seen, batch))


@pytest.mark.parametrize("arch", ["t5", "bart", "bert", "roberta", "gpt2", "llama"])
def test_kernel_adapter_is_exactly_the_identity_at_init(arch):
    model, batch = tiny_model(arch), batch_for(arch)
    with torch.no_grad():
        before = model(**batch).logits
    pl.attach(model, KernelAdapter(per_head=True, query_bias=True), name="k")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_kernel_adapter_counts_and_query_only_variant():
    model = tiny_model("llama")   # 4 query heads, 2 key/value heads of size 4, 2 layers
    pl.attach(model, KernelAdapter(per_head=True, query_bias=True), name="k")
    assert pl.trainable_parameters(model)[0] == 2 * (4 * 4 * 2 + 2 * 4)
    pl.detach(model, "k")
    pl.attach(model, KernelAdapter(scale_keys=False), name="k")
    assert pl.trainable_parameters(model)[0] == 2 * 4


def test_kernel_adapter_with_query_bias_refuses_to_merge():
    model = tiny_model("gpt2")
    pl.attach(model, KernelAdapter(query_bias=True), name="k")
    with pytest.raises(pl.PeftlabError, match="query_bias"):
        pl.merge(model, "k")


# --- KernelMix ---------------------------------------------------------------------------------------

def _mix_edits(layer: Layer, name: str):
    if layer.fused:
        part = layer.parts(name, layer.qkv[0], FusedMixPart)[0]
        query, value = part.query, part.value
    else:
        query = layer.parts(name, layer.qkv[0], QueryMix)[0]
        value = layer.parts(name, layer.qkv[2], ValueMix)[0]
    out = layer.parts(name, layer.o, OutputMix)[0]

    def head_term(m, inputs, shared):   # s (B_h A_h x + b_h), explicit loops over heads
        rows = [m.scale * ((inputs if shared else inputs[..., h, :]) @ m.A[h].T @ m.B[h].T + m.b[h])
                for h in range(m.A.shape[0])]
        return torch.stack(rows, dim=-2)

    def shared_term(m, x, heads):
        return (m.scale * (x @ m.A.T @ m.B.T)).unflatten(-1, (heads, -1))

    def q_edit(q, k, x):
        return q + head_term(query.head, x, True) + shared_term(query.shared, x, q.shape[-2]), k

    def v_edit(v, k, x):
        return v + head_term(value.head, k, False) + shared_term(value.shared, x, v.shape[-2])

    def o_edit(merged):
        heads = out.A.shape[0]
        per_head = merged.unflatten(-1, (heads, -1))
        low = torch.cat([per_head[..., h, :] @ out.A[h].T for h in range(heads)], dim=-1)
        return out.scale * (low @ out.B.T + out.b) + out.shared.scale * (merged @ out.shared.A.T @ out.shared.B.T)
    return q_edit, v_edit, o_edit


@pytest.mark.parametrize("arch,stack", CASES)
def test_kernel_mix_matches_explicit_reference(arch, stack):
    model = lively_model(arch)
    pl.attach(model, KernelMix(r_q=2, r_v=3, r_o=2, shared_r_q=3, shared_r_v=2, shared_r_o=2, alpha=4.0), name="m")
    perturb(model, "m", scale=0.2)
    layer, batch = Layer(model, stack), batch_for(arch)
    seen = layer.run(batch)
    q_edit, v_edit, o_edit = _mix_edits(layer, "m")
    expected = reference_attention(layer, seen, batch, q_edit=q_edit, v_edit=v_edit, o_edit=o_edit)
    torch.testing.assert_close(seen["out"], expected, rtol=0, atol=1e-5)
    assert_changed(expected, reference_attention(layer, seen, batch))


@pytest.mark.parametrize("arch", ["t5", "bert", "gpt2", "llama"])
def test_kernel_mix_zero_init_is_the_identity_and_normal_init_is_small(arch):
    model, batch = tiny_model(arch), batch_for(arch)
    with torch.no_grad():
        before = model(**batch).logits
    pl.attach(model, KernelMix(init="zero"), name="m")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
    pl.detach(model, "m")
    pl.attach(model, KernelMix(), name="m")
    with torch.no_grad():
        change = (model(**batch).logits - before).abs().max().item()
    assert 0 < change < 0.5


def test_kernel_mix_counts_per_term():
    # GPT-2 tiny: d = 16, 4 heads of 4, 2 layers; ranks r_q=3, r_v=8, r_o=8, shared 12 / 8 / 8.
    model = tiny_model("gpt2")
    pl.attach(model, KernelMix(), name="m")
    query = 4 * 3 * 16 + 4 * 4 * 3 + 4 * 4 + 12 * 16 * 2
    value = 4 * 8 * 4 * 2 + 4 * 4 + 8 * 16 * 2
    output = 4 * 8 * 4 + 16 * 32 + 16 + 8 * 16 * 2
    assert pl.trainable_parameters(model)[0] == 2 * (query + value + output)


# --- generate, errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("config", [KernelAdapter(per_head=True, query_bias=True), KernelMix()],
                         ids=["kernel_adapter", "kernel_mix"])
def test_generate_equals_stepwise_forward_without_cache(arch, config):
    model = tiny_model(arch)
    pl.attach(model, config, name="a")
    perturb(model, "a", scale=0.2)
    assert_generate_matches_forward(model)


@pytest.mark.parametrize("kwargs,field", [({"r_q": 0}, "r_q"), ({"r_v": -1}, "r_v"), ({"r_o": 0}, "r_o"),
                                          ({"shared_r_q": -2}, "shared_r_q"), ({"targets": []}, "targets")])
def test_kernel_mix_rejects_bad_ranks(kwargs, field):
    with pytest.raises(pl.PeftlabError, match=f"KernelMix.{field}"):
        KernelMix(**kwargs)


@pytest.mark.parametrize("config", [KernelAdapter(), KernelMix()], ids=["kernel_adapter", "kernel_mix"])
@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_head_count_not_dividing_the_width_is_a_clear_error_and_changes_nothing(arch, config):
    model = tiny_model(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.config.num_attention_heads = 5   # the projections have 16 features
    if arch == "llama":
        model.config.num_key_value_heads = 5
    with pytest.raises(pl.PeftlabError, match="5 attention heads do not divide the 16 features"):
        pl.attach(model, config, name="a")
    assert not hasattr(model, "_peftlab") and set(model.state_dict()) == set(state)


def test_an_architecture_without_a_layout_is_a_clear_error():
    model = tf.AutoModelForCausalLM.from_config(tf.OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                                             num_attention_heads=4, ffn_dim=32, word_embed_proj_dim=16))
    with pytest.raises(pl.PeftlabError, match="model type 'opt' has no peftlab layout"):
        pl.attach(model, KernelAdapter(), name="a")
