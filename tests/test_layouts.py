"""Every layout slot resolves on its architectures, including the look-alike model types."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

import peftlab as pl
from peftlab.layouts import layout_for
from peftlab.targeting import resolve_slot
from tiny import VOCAB, tiny_config, tiny_model


def _lookalike(kind):
    if kind == "t5-gated":
        config = tiny_config("t5")
        config.feed_forward_proj = "gated-gelu"
        config.is_gated_act, config.dense_act_fn = True, "gelu_new"
        return tf.T5ForConditionalGeneration(config)
    if kind == "mt5":
        return tf.MT5ForConditionalGeneration(tf.MT5Config(**tiny_config("t5").to_dict()))
    if kind in ("mistral", "qwen2"):
        cls = {"mistral": (tf.MistralConfig, tf.MistralForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}
        config_cls, model_cls = cls[kind]
        return model_cls(config_cls(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    if kind == "xlm-roberta":
        return tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(**tiny_config("roberta").to_dict()))
    if kind == "mbart":
        return tf.MBartForConditionalGeneration(tf.MBartConfig(**tiny_config("bart").to_dict()))
    return tiny_model(kind)


KINDS = ["t5", "t5-gated", "mt5", "bart", "mbart", "bert", "roberta", "xlm-roberta", "gpt2", "llama", "mistral",
         "qwen2"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_slot_of_the_layout_resolves(kind):
    model = _lookalike(kind)
    layout = layout_for(model)
    for slot in layout.slot_names():
        sites = resolve_slot(model, layout, slot)
        assert sites, slot
        assert all(site.stack in layout.stacks for site in sites)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_every_projection_slot_runs(kind):
    model = _lookalike(kind).eval()
    layout = layout_for(model)
    slots = tuple(s for s in layout.slot_names() if s.startswith(("attn.", "ffn.")))
    pl.attach(model, pl.LoRA(r=2, slots=slots), name="all")
    ids = torch.randint(3, VOCAB, (2, 5))
    kwargs = {"decoder_input_ids": ids[:, :3]} if model.config.is_encoder_decoder else {}
    assert model(input_ids=ids, **kwargs).logits.isfinite().all()


def test_gated_t5_ffn_in_hits_both_gate_projections():
    model = _lookalike("t5-gated")
    paths = [s.path for s in resolve_slot(model, layout_for(model), "ffn.in")]
    assert any(p.endswith("wi_0") for p in paths) and any(p.endswith("wi_1") for p in paths)


def test_gpt2_q_k_v_share_the_fused_projection_once():
    model = tiny_model("gpt2")
    pl.attach(model, pl.LoRA(r=2, slots=("attn.q", "attn.k", "attn.v")))
    assert len(model._peftlab.adapters["default"].parts) == 2   # one c_attn per layer, not three


def test_layer_selection_per_stack_and_leave_out():
    model = tiny_model("t5")
    pl.attach(model, pl.Houlsby(reduction_factor=4, encoder_layers=(1,), leave_out=(0,)))
    parts = model._peftlab.adapters["default"].parts
    # encoder: only layer 1 asked for; decoder: all layers minus the left-out layer 0
    assert {".".join(p.split(".")[:3:2]) for p, _ in parts} == {"encoder.1", "decoder.1"}


def test_out_of_range_layer_index_is_named():
    with pytest.raises(pl.PeftlabError, match=r"layer index 7 is out of range for the encoder stack of 2 layers"):
        pl.attach(tiny_model("bert"), pl.LoRA(layers=(7,)))
