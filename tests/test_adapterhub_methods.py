"""docs/fidelity.md, AdapterHub rows H12-H19: Compacter, invertible adapters and prefix tuning as AdapterHub
computes them, checked convention by convention against `compat="adapterhub"` and peftlab's default. The
end-to-end proof — AdapterHub's own saved adapters giving AdapterHub's logits and gradients — is
tests/test_adapterhub.py (fixtures `*-compacter*`, `*-seq_bn_inv`, `*-double_seq_bn_inv`, `*-prefix_tuning*`)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import peftlab as pl
from peftlab.attention import SITE_ATTR, AttentionCall
from peftlab.core import adapter_state
from peftlab.methods.invertible_adapterhub import AdapterHubGlow, AdapterHubNice, InvertibleForward
from peftlab.methods.phm import XAVIER_NORMAL, glorot_
from peftlab.methods.prefix_adapterhub import AdapterHubPrefix, ZeroBias
from peftlab.runtime import base_module, get_module
from tiny import tiny_batch, tiny_model


def _parts(model, kind, name="a"):
    return [(path, p) for path, p in pl.core.require(model).adapters[name].parts if isinstance(p, kind)]


def _seen(module: nn.Module, pre: bool) -> dict:
    seen = {}
    if pre:
        module.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    else:
        module.register_forward_hook(lambda m, args, out: seen.__setitem__("x", out.detach()))
    return seen


def _run(model, arch):
    with torch.no_grad():
        return model(**tiny_batch(arch))


# --- Compacter ------------------------------------------------------------------------------------------

def test_H12_every_block_is_drawn_xavier_normal_with_gain_1():
    """modeling.py:822-835: `if config["hypercomplex_nonlinearity"]:` holds for every name, so AdapterHub draws
    each block slice with xavier_normal_ (gain 1), slice by slice; the Compacter code's glorot-uniform has
    gain √2, and its "normal" N(0, phm_init_range²)."""
    blocks = torch.empty(4, 64, 8)
    torch.manual_seed(0)
    theirs = torch.stack([nn.init.xavier_normal_(blocks[i].clone()) for i in range(4)])
    torch.manual_seed(0)
    glorot_(blocks, XAVIER_NORMAL)
    torch.testing.assert_close(blocks, theirs, rtol=0, atol=0)
    drawn = {}
    for compat in ("adapterhub", None):
        for how in ("glorot-uniform", "normal"):
            model = tiny_model("bert")
            torch.manual_seed(0)
            pl.attach(model, pl.PHMAdapter(reduction_factor=4, phm_dim=4, hypercomplex_nonlinearity=how,
                                           compat=compat), "a")
            drawn[compat, how] = adapter_state(model, "a")
    for compat, ignored in (("adapterhub", True), (None, False)):
        same = [torch.equal(t, drawn[compat, "normal"][k]) for k, t in drawn[compat, "glorot-uniform"].items()]
        assert all(same) == ignored


def test_H13_every_rule_trains_biases_are_optional_and_shared_blocks_are_per_position():
    """model_mixin.py:591-602 (train_adapter unfreezes shared tensors whatever learn_phm says),
    modeling.py:648, 666-669 (phm_bias), 760-790 (one W_down and one W_up, even when their shapes agree)."""
    model = tiny_model("bert")
    pl.attach(model, pl.adapterhub.Compacter(reduction_factor=1, learn_phm=False, shared_W_phm=True,
                                             phm_bias=False), "a")
    assert adapter_state(model, "a")["home.phm_rule.phm_rule"].requires_grad
    pl.attach(model, pl.PHMAdapter(reduction_factor=1, phm_dim=4, learn_phm=False, shared_phm_rule=True,
                                   shared_W_phm=True, factorized_phm_W=True), "b")
    assert not adapter_state(model, "b")["home.phm_rule.phm_rule"].requires_grad
    theirs, ours = adapter_state(model, "a"), adapter_state(model, "b")
    assert {k.split(".")[2] for k in theirs if k.startswith("home.phm_W")} == {"down", "up"}
    assert {k.split(".")[2] for k in ours if k.startswith("home.phm_W")} == {"4x4"}
    assert not any(k.endswith(".bias") for k in theirs if ".net." in k)
    names = pl.adapterhub.tensor_names(model, "a")
    assert "bert.shared_parameters.a.W_down_left" in names and "bert.shared_parameters.a.W_up_right" in names


def test_H13_compacter_plus_plus_reads_the_normed_sum_as_seq_bn_does():
    """CompacterPlusPlusConfig extends SeqBnConfig (original_ln_before); peftlab's reads the FFN's output."""
    config = pl.adapterhub.CompacterPlusPlus()
    assert config.original_ln_before and not config.mh_adapter and config.non_linearity == "gelu"
    assert not pl.CompacterPlusPlus().original_ln_before and pl.CompacterPlusPlus().non_linearity == "swish"


# --- invertible adapters --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,module,role", [("bert", "bert.embeddings", "output"),
                                              ("gpt2", "transformer.drop", "output"),
                                              ("llama", "model.embed_tokens", "output"),
                                              ("bart", "model.encoder.layernorm_embedding", "output"),
                                              ("t5", "encoder.block.0", "input")])
def test_H14_the_coupling_reads_the_embeddings_modules_output(arch, module, role):
    """The mixins' hooks (models/bert/mixin_bert.py:85, gpt2:69, llama:42, bart:90, t5 modeling_t5.py:396-398):
    the whole embeddings output — positions, LayerNorm and dropout included — of the encoder only on T5 and
    BART; peftlab's InvertibleAdapter maps the word embeddings of every stack."""
    model = tiny_model(arch)
    pl.attach(model, pl.SeqBnInv(reduction_factor=4), "a")
    (path, part), = _parts(model, InvertibleForward)
    assert (path, part.role) == (module, role)
    host = get_module(model, module)     # what the host is given, or what its base module returns
    seen = _seen(host, pre=True) if role == "input" else _seen(base_module(host), pre=False)
    coupled = _seen(part.coupling.F[0], pre=True)
    _run(model, arch)
    torch.testing.assert_close(coupled["x"], seen["x"][..., 8:])
    if arch in ("t5", "bart"):
        decoder = model.decoder if arch == "t5" else model.model.decoder
        assert not any(isinstance(p, InvertibleForward) for m in decoder.modules() for p in getattr(m, "parts", {}))


def test_H15_the_coupling_starts_at_n_0_002_not_at_the_identity():
    """invertible.py:46 / model_mixin.py:101: init_bert_weights on every Linear; peftlab's InvertibleAdapter
    starts as the identity (a zero up-projection)."""
    torch.manual_seed(0)
    nice = AdapterHubNice(1024, 2.0, "relu")
    assert nice.F[0].weight.std().item() == pytest.approx(0.02, rel=0.05) and not nice.F[2].bias.any()
    model = tiny_model("bert")
    before = _run(model, "bert").logits
    pl.attach(model, pl.Bottleneck(compat="adapterhub", init="zero_up", inv_adapter="nice",
                                   inv_adapter_reduction_factor=2), "a")
    assert not torch.equal(_run(model, "bert").logits, before)
    assert pl.InvertibleAdapter().identity_at_init


def test_H16_a_static_lm_head_gets_no_inverse_and_glow_inverts_exactly():
    """AdapterHub's static model classes never call the inverse (only its flexible LM heads,
    heads/language_modeling.py:109-111); peftlab's InvertibleAdapter inverts before a tied head. GLOW
    (modeling.py:516-584, which fails on (batch, tokens, d) inputs in AdapterHub): the FrEIA coupling."""
    model = tiny_model("gpt2")
    pl.attach(model, pl.SeqBnInv(reduction_factor=4, inv_adapter="glow"), "a")
    head, final = _seen(base_module(model.lm_head), pre=True), _seen(base_module(model.transformer.ln_f), False)
    _run(model, "gpt2")
    torch.testing.assert_close(head["x"], final["x"], rtol=0, atol=0)
    torch.manual_seed(0)
    glow = AdapterHubGlow(17, 2.0, "relu")
    with torch.no_grad():
        for p in glow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(2, 5, 17)
    assert (glow(x) - x).abs().max() > 0.1
    torch.testing.assert_close(glow.inverse(glow(x)), x, rtol=0, atol=1e-5)
    assert {k.split(".")[0] for k in glow.state_dict()} == {"s1", "s2"}


# --- prefix tuning --------------------------------------------------------------------------------------

def test_H17_one_prefix_module_per_location_and_prefixes_in_cross_attention():
    """prefix_tuning.py:122-213 with the T5/BART mixins: encoder_prefix, self_prefix, cross_prefix, each with
    its own MLP; peftlab's PrefixTuning: one MLP, self-attention only."""
    model = tiny_model("t5")
    pl.attach(model, pl.adapterhub.PrefixTuning(prefix_length=2, bottleneck_size=8), "a")
    state = adapter_state(model, "a")
    assert {k.split(".")[2] for k in state} == {"encoder_prefix", "self_prefix", "cross_prefix"}
    assert state["home.prefix_pool.cross_prefix.control_trans.2.weight"].shape == (2 * 2 * 4 * 4, 8)
    cross = base_module(model.decoder.block[1].layer[1].EncDecAttention)
    assert isinstance(cross.__dict__[SITE_ATTR].extensions["a"], AdapterHubPrefix)
    model = tiny_model("bart")
    pl.attach(model, pl.adapterhub.PrefixTuning(prefix_length=2, cross_prefix=False, encoder_prefix=False), "a")
    assert {k.split(".")[2] for k in adapter_state(model, "a")} == {"self_prefix"}
    model = tiny_model("bert")
    pl.attach(model, pl.adapterhub.PrefixTuning(prefix_length=2, encoder_prefix=False), "a")
    assert {k.split(".")[2] for k in adapter_state(model, "a") if k.startswith("home.")} == {"self_prefix"}


def test_H18_the_real_tokens_keep_their_positions():
    """models/gpt2/modeling_gpt2.py:80-85, llama:84-86: prefixes join after the rotary embedding, positions
    untouched; peftlab's PrefixTuning shifts them by m (shift_positions, as HF PEFT)."""
    for arch in ("gpt2", "llama"):
        out = {}
        for shift in (False, True):
            model = tiny_model(arch)
            pl.attach(model, pl.adapterhub.PrefixTuning(prefix_length=3, flat=True), "a")
            pl.attach(model, pl.PrefixTuning(prefix_length=3, flat=True, shift_positions=shift), "b")
            theirs = adapter_state(model, "a")["home.prefix_pool.self_prefix.control_trans"]
            with torch.no_grad():
                adapter_state(model, "b")["home.prefix.embedding"].copy_(theirs.view(3, -1))
            for name in ("a", "b"):
                pl.activate(model, name)
                out[shift, name] = _run(model, arch).logits
        torch.testing.assert_close(out[False, "a"], out[False, "b"], rtol=0, atol=1e-5)
        assert not torch.allclose(out[True, "a"], out[True, "b"], atol=1e-3)


def test_H19_t5s_relative_bias_spans_prefix_and_keys_and_vanishes_after_a_change():
    """models/t5/modeling_t5.py:137-160: the bias is computed over the m + n keys (queries at 0.., the real keys
    at m..), and a layer whose key count differs from the layer before recomputes it — as zeros, past the
    first layer, and passes that on. peftlab's PrefixTuning gives the prefix its own columns' bias."""
    model = tiny_model("t5")
    pl.attach(model, pl.adapterhub.PrefixTuning(prefix_length=2, encoder_layers=(0,)), "a")
    extension = {path: module.__dict__[SITE_ATTR].extensions["a"] for path, module in model.named_modules()
                 if SITE_ATTR in module.__dict__}
    assert type(extension["encoder.block.1.layer.0.SelfAttention"]) is ZeroBias      # not prefixed, no bias
    assert not any(getattr(e, "zero_bias", False) for e in extension.values())
    first = base_module(model.encoder.block[0].layer[0].SelfAttention)
    q = torch.randn(2, 4, 5, 4)
    call = AttentionCall(first, q, q, q, None, {"position_bias": first.compute_bias(5, 5)}, None)
    extension["encoder.block.0.layer.0.SelfAttention"].before(call)
    torch.testing.assert_close(call.kwargs["position_bias"], first.compute_bias(5, 7))
    call = AttentionCall(first, q, q, q, None, {"position_bias": first.compute_bias(5, 5)}, None)
    extension["encoder.block.1.layer.0.SelfAttention"].before(call)
    assert call.kwargs["position_bias"].shape == (1, 4, 5, 5) and not call.kwargs["position_bias"].any()
