"""docs/fidelity.md, AdapterHub rows (H1-H10): what AdapterHub's code computes, checked formula by formula
against `compat="adapterhub"` and peftlab's default. The end-to-end proof, AdapterHub's own saved adapters
giving AdapterHub's logits, is tests/test_adapterhub.py; these say which convention makes the difference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import peftlab as pl
from peftlab.adapterhub_format import global_leave_out, layer_fields
from peftlab.methods.bottleneck import BottleneckNet
from peftlab.methods.bottleneck_adapterhub import AdapterHubNet, ParallelAdapterHub, SerialAdapterHub
from peftlab.methods.ia3 import IA3Part
from peftlab.methods.lora_adapterhub import FusedIA3Part, FusedLoRAPart, ScaledIA3Part
from peftlab.runtime import base_module
from tiny import tiny_batch, tiny_model


def _parts(model, kind, name="a"):
    return [(path, p) for path, p in pl.core.require(model).adapters[name].parts if isinstance(p, kind)]


class _Seen:
    """What a module received (pre=True) or returned, in the last forward."""

    def __init__(self, module: nn.Module, pre: bool):
        self.value = None
        if pre:
            module.register_forward_pre_hook(lambda m, args: setattr(self, "value", args[0].detach()))
        else:
            module.register_forward_hook(lambda m, args, out: setattr(self, "value", out.detach()))


def _run(model, arch="bert"):
    with torch.no_grad():
        model(**tiny_batch(arch))


def test_H1_seq_bn_reads_the_normed_sum_on_post_norm_models_and_the_sum_on_pre_norm_ones():
    """modeling.py:183-200: with original_ln_before the adapter's input is LN(h + x) (BERT) or h + x (T5)."""
    model = tiny_model("bert")
    pl.attach(model, pl.SeqBn(), "a")
    layer = model.bert.encoder.layer[0]
    (_, part), = [(p, q) for p, q in _parts(model, SerialAdapterHub) if p.startswith("bert.encoder.layer.0.")]
    z, h, x = _Seen(part.net.down, True), _Seen(base_module(layer.output.dropout), False), \
        _Seen(base_module(layer.intermediate.dense), True)
    _run(model)
    torch.testing.assert_close(z.value, layer.output.LayerNorm(h.value + x.value))
    model = tiny_model("t5")
    pl.attach(model, pl.SeqBn(), "a")
    ffn = model.encoder.block[0].layer[1]
    (_, part), = [(p, q) for p, q in _parts(model, SerialAdapterHub) if p.startswith("encoder.block.0.")]
    z, h, x = _Seen(part.net.down, True), _Seen(base_module(ffn.DenseReluDense.wo), False), \
        _Seen(base_module(ffn.layer_norm), True)
    _run(model, "t5")
    torch.testing.assert_close(z.value, h.value + x.value)


def test_H2_par_bn_reads_the_residual_stream_with_factor_2_and_scale_4():
    """modeling.py:303-307: the parallel branch's input is the sublayer's residual input (GPT-2: before ln_2);
    peftlab's Parallel reads the FFN's normed input. ParBnConfig: reduction factor 2, scaling 4."""
    model = tiny_model("gpt2")
    pl.attach(model, pl.ParBn(), "a")
    block = model.transformer.h[0]
    (_, part), = [(p, q) for p, q in _parts(model, ParallelAdapterHub) if ".h.0." in p]
    assert part.net.down.out_features == 16 // 2 and part.net.fixed_scale == 4.0
    seen, residual = _Seen(part.net.down, True), _Seen(base_module(block.ln_2), True)
    _run(model, "gpt2")
    torch.testing.assert_close(seen.value, residual.value)
    model = tiny_model("gpt2")
    pl.attach(model, pl.Parallel(), "a")
    net = [p for _, p in pl.core.require(model).adapters["a"].parts if hasattr(p, "net")][0].net
    seen, normed = _Seen(net.down, True), _Seen(model.transformer.h[0].ln_2, False)
    _run(model, "gpt2")
    assert net.down.out_features == 16 // 16
    torch.testing.assert_close(seen.value, normed.value)


@pytest.mark.parametrize("residual_before_ln", [True, False, "post_add"])
def test_H3_residual_before_ln_means_the_models_layer_norm(residual_before_ln):
    """modeling.py:177-203: True keeps h, False takes LN(h + x), "post_add" h + x."""
    model = tiny_model("bert")
    pl.attach(model, pl.SeqBn(residual_before_ln=residual_before_ln), "a")
    layer = model.bert.encoder.layer[0]
    (_, part), = [(p, q) for p, q in _parts(model, SerialAdapterHub) if p.startswith("bert.encoder.layer.0.")]
    out, h, x = _Seen(part, False), _Seen(base_module(layer.output.dropout), False), \
        _Seen(base_module(layer.intermediate.dense), True)
    _run(model)
    z = layer.output.LayerNorm(h.value + x.value)
    residual = {True: h.value, False: z, "post_add": h.value + x.value}[residual_before_ln]
    torch.testing.assert_close(out.value, part.net.serial(z, residual))


def test_H4_the_output_layer_norm_follows_the_scaling_and_the_dropout():
    """modeling.py:210-235: LN_after(s · up(f(down z))) + r; peftlab's own net: s · LN_after(up(f(down z)))."""
    torch.manual_seed(0)
    ours = BottleneckNet(16, 4, "relu", False, True, 2.0, "bert")
    theirs = AdapterHubNet(16, 4, "relu", False, True, 2.0, "bert", None, 0.0, False)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        nn.init.normal_(theirs.ln_after.weight)
        ours.ln_after.load_state_dict(theirs.ln_after.state_dict())
        z, r = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
        up = theirs.up(theirs.act(theirs.down(z)))
        torch.testing.assert_close(theirs.serial(z, r), theirs.ln_after(2.0 * up) + r)
        torch.testing.assert_close(ours.branch(z), 2.0 * ours.ln_after(up))
        theirs.adapter_residual_before_ln = True
        torch.testing.assert_close(theirs.serial(z, r), theirs.ln_after(2.0 * up + r))


def test_H5_bert_init_and_a_bottleneck_of_at_least_one():
    """modeling.py:68-75, 122-127, 265-274: weights N(0, 0.02²), biases zero; k = max(1, int(d // rf))."""
    torch.manual_seed(0)
    net = AdapterHubNet(512, 256, "relu", False, False, 1.0, "bert", None, 0.0, False)
    assert net.down.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert not net.down.bias.any() and not net.up.bias.any()
    model = tiny_model("bert")
    pl.attach(model, pl.SeqBn(reduction_factor=32), "a")      # 16 // 32 = 0: AdapterHub makes it 1
    assert {p.net.down.out_features for _, p in _parts(model, SerialAdapterHub)} == {1}
    with pytest.raises(pl.PeftlabError, match="zero-size bottleneck"):
        pl.attach(tiny_model("bert"), pl.Pfeiffer(reduction_factor=32), "a")


def test_H6_ia3_scales_the_intermediate_projections_output_times_alpha():
    """lora.py:236-314 and the mixins: W1's output (Llama: down_proj's), times alpha; HF PEFT: W2's input."""
    model = tiny_model("bert")
    pl.attach(model, pl.adapterhub.IA3(alpha=2.0), "a")
    pl.attach(model, pl.IA3(), "b")
    theirs = {p: q for p, q in _parts(model, ScaledIA3Part)}
    ours = {p: q for p, q in _parts(model, IA3Part, "b") if q.role == "input"}
    assert "bert.encoder.layer.0.intermediate.dense" in theirs and "bert.encoder.layer.0.output.dense" in ours
    part = theirs["bert.encoder.layer.0.intermediate.dense"]
    t = torch.randn(2, 32)
    torch.testing.assert_close(part(t), t * 2.0)
    model = tiny_model("llama")
    pl.attach(model, pl.adapterhub.IA3(), "a")
    assert any(p.endswith("mlp.down_proj") for p, _ in _parts(model, ScaledIA3Part))
    model = tiny_model("gpt2")
    pl.attach(model, pl.adapterhub.IA3(alpha=2.0, attn_matrices=("v",)), "a")
    (_, fused), = [(p, q) for p, q in _parts(model, FusedIA3Part) if ".h.0." in p]
    assert torch.equal(fused.scale_vector(), torch.full((48,), 2.0))   # q and k blocks are scaled by alpha too


def test_H7_the_prompt_joins_the_embeddings_output_unchanged():
    """prompt_tuning.py:180-216: after the embeddings module; pl.PromptTuning goes through it (positions, LN)."""
    for config, untouched in ((pl.adapterhub.PromptTuning(prompt_length=3), True), (pl.PromptTuning(length=3), False)):
        model = tiny_model("bert")
        pl.attach(model, config, "a")
        seen = _Seen(model.bert.encoder.layer[0], True)
        _run(model)
        prompt = next(t for k, t in pl.core.adapter_state(model, "a").items() if k.startswith("home.prompt"))
        assert torch.equal(seen.value[0, :3], prompt.detach()) == untouched


def test_H8_under_sdpa_the_prompts_queries_attend_to_padding():
    """models/bert/modeling_bert.py:49 (eager) vs :166 (SDPA, the default): only a padded row differs."""
    out = {}
    for sees in (True, False):
        model = tiny_model("bert")
        pl.attach(model, pl.adapterhub.PromptTuning(prompt_length=3, prompt_sees_padding=sees), "a")
        with torch.no_grad():
            out[sees] = model(**tiny_batch("bert")).logits      # row 0 has two padded tokens
    assert not torch.equal(out[True][0], out[False][0])
    torch.testing.assert_close(out[True][1], out[False][1], rtol=0, atol=1e-6)


def test_H9_lora_wraps_cross_attention_llamas_down_projection_and_gpt2s_fused_blocks():
    """mixin_t5.py:22-28, mixin_llama.py:26-27, lora.py:1153-1287."""
    model = tiny_model("t5")
    pl.attach(model, pl.adapterhub.LoRA(r=2), "a")
    paths = [p for p, _ in pl.core.require(model).adapters["a"].parts]
    assert "decoder.block.0.layer.1.EncDecAttention.q" in paths and len(paths) == 2 * 2 * 2 + 2 * 2
    model = tiny_model("llama")
    pl.attach(model, pl.adapterhub.LoRA(r=2, selfattn_lora=False, intermediate_lora=True), "a")
    assert {p.rsplit(".", 1)[-1] for p, _ in pl.core.require(model).adapters["a"].parts} == {"down_proj"}
    model = tiny_model("gpt2")
    pl.attach(model, pl.adapterhub.LoRA(r=2), "a")
    (_, fused), = [(p, q) for p, q in _parts(model, FusedLoRAPart) if ".h.0." in p]
    assert fused.lora_A.shape == (2 * 2, 16) and fused.lora_B.shape == (2 * 16, 2)
    assert not fused.delta_weight()[16:32].any()       # k untouched


def test_H10_leave_out_counts_layers_across_the_stacks():
    """mixin_t5.py:103-112, mixin_bart.py:92-97: the decoder's layers are numbered after the encoder's."""
    stacks = {"encoder": ("encoder.block", 2), "decoder": ("decoder.block", 2)}
    fields = layer_fields([0, 3], stacks, "here")
    assert fields == {"encoder_layers": [1], "decoder_layers": [0]}
    assert global_leave_out(pl.SeqBn(**fields), stacks) == [0, 3]
    assert layer_fields([1, 7], {"decoder": ("h", 2)}, "here") == {"leave_out": [1]}
