"""docs/fidelity.md, row by row: what the seed code bases compute, checked against peftlab's default and
its `compat` switch — initialization statistics over many draws, formulas computed directly here, the
SAID gradient scale per tensor, which parameters move. The row id is in each test's name."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as tf

import peftlab as pl
from peftlab.core import attachment_parameters
from peftlab.methods.lowrank import LowRankLinear
from peftlab.methods.intrinsic import IntrinsicProjector
from peftlab.methods.phm import PHMBlocks
from peftlab.methods.prompt import save_random_prompts
from peftlab.runtime import Host
from tiny import tiny_batch, tiny_model


def _home(model, name="a"):
    return model.peftlab_adapters[name]


def _parts(model, name, kind):
    return [p for _, p in pl.core.require(model).adapters[name].parts if isinstance(p, kind)]


# --- Compacter (rabeehk/compacter e123daa) ------------------------------------------------------------

def test_C1_phm_blocks_and_low_rank_factors_use_glorot_with_gain_sqrt2():
    """hypercomplex/inits.py:7,10: xavier_uniform_/normal_(gain=sqrt(2)), per 2-D slice."""
    torch.manual_seed(0)
    blocks = PHMBlocks(4, 96, 160, False, 1, "glorot-uniform", 0.01).W
    gain1 = math.sqrt(6 / (96 + 160))
    assert gain1 < blocks.abs().max() <= math.sqrt(2) * gain1
    normal = PHMBlocks(4, 96, 160, False, 1, "glorot-normal", 0.01).W
    assert normal.std().item() == pytest.approx(math.sqrt(2) * math.sqrt(2 / 256), rel=0.03)
    low = LowRankLinear(768, 24, 1).W_left
    assert math.sqrt(6 / 769) < low.abs().max() <= math.sqrt(2) * math.sqrt(6 / 769)
    low_normal = LowRankLinear(4000, 24, 1, "glorot-normal").W_left
    assert low_normal.std().item() == pytest.approx(2 / math.sqrt(4001), rel=0.05)


def test_C2_rule_inits_follow_the_code_whatever_phm_init_range_says():
    """layers.py:133-149: per-layer rules N(0, 0.01²) / U(±0.01); modeling_t5.py:1543-1560: a shared rule
    N(0, phm_init_range²) or U(-1, 1)."""
    torch.manual_seed(0)
    model = tiny_model("t5")
    pl.attach(model, pl.PHMAdapter(reduction_factor=1, phm_dim=8, phm_init_range=1e-4), "a")
    rules = torch.cat([m.phm_rule.flatten() for m in model.modules() if type(m).__name__ == "PHMRule"])
    assert rules.std().item() == pytest.approx(0.01, rel=0.05)          # not 1e-4
    model = tiny_model("t5")
    pl.attach(model, pl.PHMAdapter(reduction_factor=1, phm_dim=8, shared_phm_rule=True, phm_c_init="uniform"), "a")
    shared = _home(model).phm_rule.phm_rule
    assert 0.9 < shared.abs().max() <= 1.0                               # U(-1, 1)
    model = tiny_model("t5")
    pl.attach(model, pl.PHMAdapter(reduction_factor=1, phm_dim=8, shared_phm_rule=True, phm_init_range=0.3), "a")
    assert _home(model).phm_rule.phm_rule.std().item() == pytest.approx(0.3, rel=0.15)


def test_C3_a_shared_rule_trains_with_learn_phm_off_only_under_compat():
    """utils/utils.py:78-83 sets the shared rule trainable unconditionally."""
    for compat, trains in ((None, False), ("compacter", True)):
        model = tiny_model("t5")
        pl.attach(model, pl.Compacter(reduction_factor=4, learn_phm=False, compat=compat), "a")
        assert _home(model).phm_rule.tensors()[0].requires_grad is trains


def test_C4_bitfit_trains_the_lm_head_unless_frozen():
    """utils/utils.py:115-130: every `.bias`, then all of lm_head (tied: the embedding), then with
    freeze_bitfit_lm_head only its bias."""
    model = tiny_model("t5")
    pl.attach(model, pl.BitFit(), "a")
    assert model.shared.weight.requires_grad and model.lm_head.weight is model.shared.weight
    with_head = pl.trainable_parameters(model)[0]
    model = tiny_model("t5")
    pl.attach(model, pl.BitFit(freeze_bitfit_lm_head=True), "a")
    assert not model.shared.weight.requires_grad
    assert with_head - pl.trainable_parameters(model)[0] == model.shared.weight.numel()


def _said_grads(compat):
    projector = IntrinsicProjector([5, 20, 100], 40, False, "fastfood", 1, torch.device("cpu"),
                                   compacter=compat)
    with torch.no_grad():
        projector.z.normal_(generator=torch.Generator().manual_seed(2))
    grads = []
    for target in range(3):            # the gradient reaching z through tensor `target` alone
        projector.z.grad = None
        deltas = projector.deltas()
        weights = torch.randn(deltas[target].shape, generator=torch.Generator().manual_seed(target))
        (deltas[target] * weights).sum().backward()
        grads.append(projector.z.grad.clone())
    return grads


def test_C5_said_gradient_through_each_tensor_is_scaled_by_one_over_L_under_compat():
    """projections/intrinsic.py:126-139: the FWHT backward returns H·g/√L, twice per projection."""
    exact, scaled = _said_grads(False), _said_grads(True)
    for length, g_exact, g_scaled in zip((8, 32, 128), exact, scaled):
        torch.testing.assert_close(g_scaled, g_exact / length, rtol=1e-5, atol=1e-7)
        assert g_exact.abs().max() > 0


def test_C6_a_tied_lm_head_keeps_theta0_under_compat():
    """intrinsic.py:253-254 replaces the embedding module's weight only."""
    for compat, moves in ((None, True), ("compacter", False)):
        model = tiny_model("t5")
        original = model.lm_head.weight
        pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=300, compat=compat), "a")
        with torch.no_grad():
            _home(model).intrinsic.z.normal_()
        seen = {}

        def looker(key):
            def hook(module, args):
                seen.setdefault(key, module._parameters["weight"])
            return hook
        model.lm_head.register_forward_pre_hook(looker("w"))
        model.encoder.embed_tokens.register_forward_pre_hook(looker("e"))
        with torch.no_grad():
            model(**tiny_batch("t5"))
        assert seen["e"] is not original
        assert (seen["w"] is not original) is moves


def test_C7_said_sizes_under_compat_count_one_lambda_too_many():
    """intrinsic.py:155-170: the projector itself is counted among the tensors: z = d' - (m + 1)."""
    model = tiny_model("t5")
    m = len({id(p) for p in model.parameters()})
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=300, compat="compacter"), "a")
    projector = _home(model).intrinsic
    assert projector.z.numel() == 300 - m - 1 and projector.said_lambda.numel() == m + 1
    assert pl.trainable_parameters(model)[0] == 300


def test_C8_dense_projection_under_compat_is_unnormalized_n_0_001():
    """intrinsic.py:74-79,115-120: R ~ N(0, 0.01²), the divisor computed and unused."""
    projector = IntrinsicProjector([4000, 3000], 50, False, "dense", 0, torch.device("cpu"), compacter=True)
    assert projector.dense.std().item() == pytest.approx(0.01, rel=0.02)
    default = IntrinsicProjector([4000, 3000], 50, False, "dense", 0, torch.device("cpu"))
    assert default.dense[:4000].std().item() == pytest.approx(4000 ** -0.5, rel=0.02)


def test_C9_vocab_init_is_the_pretrained_rows_by_default_and_n01_under_compat():
    """modeling_t5.py:766-772,1602-1607 (Compacter) and :821-824,1759-1764 (ATTEMPT): the rows are
    copied before the checkpoint loads, from a fresh N(0, 1) table."""
    model = tiny_model("t5")
    pl.attach(model, pl.PromptTuning(length=20, init="vocab"), "a")
    torch.testing.assert_close(_home(model).prompt.embedding, model.shared.weight[:20])
    for compat in ("compacter", "attempt"):
        model = tiny_model("t5")
        pl.attach(model, pl.PromptTuning(length=2000, init="vocab", vocab_ids="sample", compat=compat), "a")
        prompt = _home(model).prompt.embedding
        assert prompt.std().item() == pytest.approx(1.0, rel=0.03) and prompt.mean().abs() < 0.02


# --- ATTEMPT (AkariAsai/ATTEMPT b5121e5) -----------------------------------------------------------------

def _attempt(arch, tmp_path, compat=None, **kw):
    model = tiny_model(arch)
    pl.attach(model, pl.Attempt(sources=save_random_prompts(model, tmp_path), attn_hidden=8, compat=compat, **kw), "a")
    return model


def test_A1_the_input_pool_takes_in_the_pad_embedding_under_compat(tmp_path):
    """modeling_t5.py:1072 max-pools every position of the padded input."""
    from peftlab.methods.attempt import masked_max_pool, mixing_weights
    for compat in (None, "attempt"):
        model = _attempt("t5", tmp_path, compat)
        batch = tiny_batch("t5")
        embeds = model.shared(batch["input_ids"])
        provider = _home(model).prompt
        pooled = masked_max_pool(embeds, batch["attention_mask"])
        if compat:
            pooled = torch.maximum(pooled, model.shared.weight[model.config.pad_token_id])
        h = provider.norm(provider.up(torch.nn.functional.silu(provider.down(pooled))))
        keys = torch.cat([provider.sources.amax(1), provider.targets[0].amax(0, keepdim=True)])
        expected = torch.softmax(h @ keys.T / provider.temperature, -1)
        torch.testing.assert_close(mixing_weights(model, "a", embeds, batch["attention_mask"]), expected)


def test_A2_g_starts_n_0_001(tmp_path):
    """modeling_t5.py:867-871: _init_weights gives every nn.Linear N(0, 0.01²)."""
    model = tiny_model("t5")
    pl.attach(model, pl.Attempt(num_sources=2, length=4, attn_hidden=3000), "a")
    for linear in (_home(model).prompt.down, _home(model).prompt.up):
        assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_A3_the_temperature_default_is_d_e_and_2000_under_compat(tmp_path):
    """options.py:265-270 (its configs pass 2087 ≈ 768·e)."""
    assert _home(_attempt("t5", tmp_path)).prompt.temperature == pytest.approx(16 * math.e)
    assert _home(_attempt("t5", tmp_path, "attempt")).prompt.temperature == 2000.0


def test_A4_spot_from_several_sources_is_their_mean_or_a_random_weighting_under_compat(tmp_path):
    """modeling_t5.py:1800-1822 (update_prefix_weights): Σ w_i P_i, w_i ~ U(0, 1), unnormalized."""
    from peftlab.methods.prompt import read_saved_prompt
    model = tiny_model("t5")
    paths = save_random_prompts(model, tmp_path, count=3)
    prompts = torch.stack([read_saved_prompt(p) for p in paths])
    pl.attach(model, pl.SPoT(sources=paths), "a")
    torch.testing.assert_close(_home(model).prompt.embedding, prompts.mean(0))
    model = tiny_model("t5")
    pl.attach(model, pl.SPoT(sources=paths, seed=5, compat="attempt"), "a")
    weights = torch.rand(3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(_home(model).prompt.embedding, torch.einsum("t,tmd->md", weights, prompts))


# --- kernel-adapters (ychen-stat-ml/kernel-adapters d22e53f) ---------------------------------------------

def _gpt2(dropout=0.0):
    config = tf.GPT2Config(vocab_size=96, n_embd=16, n_layer=2, n_head=4, n_positions=64, attn_pdrop=dropout,
                           resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(config)


def _train_logits(model, seed=0):
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(**{k: v for k, v in tiny_batch("gpt2").items() if k != "labels"}).logits


def test_K1_the_inducer_share_passes_the_attention_dropout():
    """nlg/modeling/custom_gpt2.py:328 (and nlu modeling_roberta.py:423): attn_dropout(w)."""
    outputs = {}
    for share in (True, False):
        model = _gpt2(dropout=0.5)
        pl.attach(model, pl.Inducer(rank_k=2, rank_v=3, share_dropout=share), "a")
        with torch.no_grad():
            for p in attachment_parameters(model, "a"):
                p.add_(torch.randn_like(p))
        outputs[share] = _train_logits(model)
    assert (outputs[True] - outputs[False]).abs().max() > 1e-4    # same seed: only w's dropout differs
    model = _gpt2(dropout=0.0)
    pl.attach(model, pl.Inducer(rank_k=2, rank_v=3), "a")
    torch.testing.assert_close(_train_logits(model, 1), _train_logits(model, 2))   # p = 0: nothing drawn


def test_K2_an_encoders_inducer_share_sees_the_padding_under_compat():
    """nlu/models/roberta/modeling_roberta.py:412-427: w from the unmasked scores."""
    from test_kernel import lively_model
    for compat, depends in ((None, False), ("kernel-adapters", True)):
        model = lively_model("roberta")
        pl.attach(model, pl.Inducer(rank_k=2, rank_v=3, compat=compat), "a")
        extension = next(m for m in model.modules() if type(m).__name__ == "InducerExtension")
        shares = []
        share = extension.share
        extension.share = lambda call, q: shares.append(share(call, q)) or shares[-1]
        batch = {k: v for k, v in tiny_batch("roberta").items() if k != "labels"}
        other = {**batch, "input_ids": batch["input_ids"].clone()}
        other["input_ids"][0, -2:] = 50        # another token under row 0's padding
        with torch.no_grad():
            model(**batch), model(**other)
        changed = (shares[0][0, :, :5] - shares[1][0, :, :5]).abs().max()   # row 0's real queries
        assert bool(changed > 1e-4) is depends, changed


def test_K3_inducer_lora_has_the_codes_lora_bias_scaled_by_alpha_over_r():
    """nlg/adapters/low_rank_layer.py:97-98,147,222-223: output + b·s, b zeros; 768 per GPT-2 layer."""
    config = pl.InducerLoRA()
    assert config.lora.bias and pl.InducerMAM().lora.bias
    model = tiny_model("gpt2")
    pl.attach(model, pl.InducerLoRA(rank_k=2, rank_v=3, lora=pl.LoRA(r=2, alpha=8.0, slots=("attn.q",), bias=True)),
              "a")
    part = next(p.lora for _, p in pl.core.require(model).adapters["a"].parts if hasattr(p, "lora"))
    assert part.lora_bias.abs().sum() == 0 and part.lora_bias.numel() == 16
    with torch.no_grad():
        part.lora_bias.fill_(1.0)
    x = torch.randn(3, 16)
    torch.testing.assert_close(part(x), torch.full((3, 16), 4.0))    # B = 0: s·b, s = 8 / 2


def test_K4_the_inducer_mam_parallel_adapter_starts_n_0_002():
    """custom_modeling_utils.py:1269-1288 re-initializes modules missing from the checkpoint with
    custom_gpt2.py:677-691: Linear weights N(0, 0.02²), biases zero; so the up-projection is not zero."""
    model = _gpt2()
    pl.attach(model, pl.InducerMAM(parallel_adapter=pl.Parallel(bottleneck_size=400, init="bert",
                                                                adapter_layernorm_before=True, scaling=1.0)), "a")
    nets = [p.net for _, p in pl.core.require(model).adapters["a"].parts if hasattr(p, "net")]
    weights = torch.cat([torch.cat([n.down.weight.flatten(), n.up.weight.flatten()]) for n in nets])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert pl.InducerMAM().parallel_adapter.init == "bert"


def test_K5_kernel_mix_drops_each_terms_input_with_its_own_mask():
    """kernel-mix.json:22 lora_dropout 0.1; low_rank_layer.py:78-90: one Dropout per LoRALinear."""
    from peftlab.methods.kernel import QueryMix
    assert pl.KernelMix().dropout == 0.1
    model = tiny_model("gpt2")
    pl.attach(model, pl.KernelMix(r_q=2, r_v=2, r_o=2, shared_r_q=2, shared_r_v=2, shared_r_o=2, dropout=0.5), "a")
    calls = []
    parts = [p for _, p in pl.core.require(model).adapters["a"].parts]
    query = next(getattr(p, "query") for p in parts if getattr(p, "query", None) is not None)
    assert isinstance(query, QueryMix)
    query.dropout.register_forward_hook(lambda m, i, o: calls.append(o))
    query.train()
    query(torch.randn(2, 3, 16))
    assert len(calls) == 2 and not torch.equal(calls[0], calls[1])   # two masks: head and shared terms


# --- nlprunners (zphang/nlprunners 37edf66) ------------------------------------------------------------

def _bert_sources(tmp_path, trained_norms=True):
    """Two RoBERTa-style sources, each trained with its own LayerNorms and head (saved like model.p)."""
    paths = {}
    for seed, name in enumerate(("a", "b")):
        model = tiny_model("bert")
        pl.attach(model, pl.Houlsby(reduction_factor=2, unfreeze_layer_norms=trained_norms), name)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
        paths[name] = str(pl.save(model, tmp_path / name, name))
    return paths


def _hosts_parts(model, name):
    return {h.path: h.parts[name][0] for h in model.modules() if isinstance(h, Host) and name in h.parts}


def _norm_values(path):
    from safetensors.torch import load_file
    saved = load_file(f"{path}/peftlab_weights.safetensors")
    return {k[len("base."):]: v for k, v in saved.items() if k.startswith("base.") and "LayerNorm" in k}


def test_N1_each_branch_goes_through_its_own_sources_norm_and_the_base_through_the_pretrained(tmp_path):
    """multi_adapter_modeling.py:70-84, 301-339: Σ_k w_k LN_k(adapter_k(z) + x) + w_b LN_pre(z + x)."""
    paths = _bert_sources(tmp_path)
    fresh = tiny_model("bert")
    pretrained = copy.deepcopy(fresh)
    pl.attach(fresh, pl.methods.weighted_sum.WeightedSumConfig(adapters=("a", "b"), sources=paths), "mix")
    batch = {k: v for k, v in tiny_batch("bert").items() if k != "labels"}
    with torch.no_grad():
        mixed = fresh(**batch).logits
    values = {n: _norm_values(p) for n, p in paths.items()}
    parts = {n: _hosts_parts(fresh, n) for n in ("a", "b")}
    reference = pretrained
    reference.classifier.load_state_dict(fresh.classifier.state_dict())
    for path, module in list(reference.named_modules()):
        if type(module).__name__ not in ("BertSelfOutput", "BertOutput"):
            continue
        norms = {}
        for name in ("a", "b"):
            norm = copy.deepcopy(module.LayerNorm)
            norm.weight.data.copy_(values[name][f"{path}.LayerNorm.weight"])
            norm.bias.data.copy_(values[name][f"{path}.LayerNorm.bias"])
            norms[name] = norm
        adapters = [parts[n].get(f"{path}.dropout") for n in ("a", "b")]

        def mix(m, args, out, norms=norms, adapters=adapters):
            h, x = args
            z = m.dense(h)
            branches = [m.LayerNorm(z + x)] + [norms[n](a(z) + x) for n, a in zip(("a", "b"), adapters)]
            return sum(b / 3 for b in branches)
        module.register_forward_hook(mix)
    with torch.no_grad():
        torch.testing.assert_close(mixed, reference(**batch).logits, rtol=0, atol=1e-5)


def test_N2_gates_start_at_zero_and_free_weights_at_one():
    """multi_adapter_modeling.py:26-35."""
    model = tiny_model("bert")
    for name in ("a", "b"):
        pl.attach(model, pl.Houlsby(reduction_factor=2), name)
    pl.attach(model, pl.WeightedSum("a", "b", mode="gates", name="g"), activate=False)
    pl.attach(model, pl.WeightedSum("a", "b", mode="weights", name="w"), activate=False)
    assert torch.equal(_home(model, "g").weight_sets.get(0), torch.full((3,), 0.5))
    assert torch.equal(_home(model, "w").weight_sets.get(0), torch.ones(3))


def test_N3_flex_is_an_adapter_of_size_64_on_the_mix_without_a_norm():
    """multi_adapter_modeling.py:335 (optimized path): flex(m) = m + up(gelu(down m) + b) + b."""
    from peftlab.methods.weighted_sum import NormMix
    model = tiny_model("bert")
    for name in ("a", "b"):
        pl.attach(model, pl.Houlsby(reduction_factor=2), name)
    pl.attach(model, pl.WeightedSum("a", "b", flex=True, train_mode="flex", include_base=False))
    mixer = _parts(model, "wsum_a_b", NormMix)[0]
    net = mixer.flex
    assert net.down.weight.shape == (64, 16) and net.down.weight.std().item() == pytest.approx(2e-4, rel=0.2)
    m = torch.randn(3, 16)
    expected = m + net.up(torch.nn.functional.gelu(net.down(m)))
    torch.testing.assert_close(mixer.flexed(m), expected)


def test_N4_one_weight_set_by_default():
    """runscript_multi_adapter.py:73 and multi_adapter_modeling.py:499: num_weight_sets 1."""
    assert pl.WeightedSum("a", "b").options()["num_weight_sets"] == 1


def test_N5_base_ft_trains_the_base_but_not_its_per_layer_norms():
    """multi_adapter_modeling.py:772-776: the per-layer LayerNorms stay as pretrained under base_ft."""
    model = tiny_model("bert")
    for name in ("a", "b"):
        pl.attach(model, pl.Houlsby(reduction_factor=2), name)
    pl.attach(model, pl.WeightedSum("a", "b", train_mode="base_ft"))
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    layer_norms = {n for n, _ in model.named_parameters() if "encoder.layer" in n and "LayerNorm" in n}
    assert layer_norms and not trains & layer_norms
    assert "bert.encoder.layer.0.attention.self.query.weight" in trains
    assert "bert.embeddings.LayerNorm.weight" in trains


def test_N6_compat_normalizes_the_sources_together_with_a_scale_and_shift_each(tmp_path):
    """multi_adapter_modeling.py:244-253, 376-380: nn.LayerNorm((k, d)) over the stacked branches."""
    from peftlab.methods.weighted_sum import NormMix
    paths = _bert_sources(tmp_path)
    fresh = tiny_model("bert")
    pl.attach(fresh, pl.methods.weighted_sum.WeightedSumConfig(adapters=("a", "b"), sources=paths,
                                                               compat="nlprunners"), "mix")
    mixer = _parts(fresh, "mix", NormMix)[0]
    s, deltas = torch.randn(2, 3, 16), [torch.randn(2, 3, 16), torch.randn(2, 3, 16)]
    stacked = torch.stack([s + d for d in deltas], -2)
    mean = stacked.mean((-2, -1), keepdim=True)
    var = stacked.var((-2, -1), unbiased=False, keepdim=True)
    normed = (stacked - mean) / torch.sqrt(var + mixer.norms[0].eps)
    expected = [normed[..., k, :] * n.weight + n.bias for k, n in enumerate(mixer.norms)]
    for got, want in zip(mixer._source_branches(s, deltas), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixer.norms[0](s + deltas[0]), expected[0], atol=1e-3)


def test_N7_the_head_starts_fresh_or_from_the_member_named(tmp_path):
    """multi_adapter_modeling.py:745-749 drops the sources' classifier weights: a fresh head."""
    paths = _bert_sources(tmp_path)
    fresh = tiny_model("bert")
    head = fresh.classifier.weight.clone()
    config = pl.methods.weighted_sum.WeightedSumConfig
    pl.attach(fresh, config(adapters=("a", "b"), sources=paths), "mix")
    torch.testing.assert_close(fresh.classifier.weight, head)
    other = tiny_model("bert")
    pl.attach(other, config(adapters=("a", "b"), sources=paths, head_from="a"), "mix")
    from safetensors.torch import load_file
    saved = load_file(f"{paths['a']}/peftlab_weights.safetensors")["base.classifier.weight"]
    torch.testing.assert_close(other.classifier.weight, saved)


def test_A5_attn_learning_rate_does_not_apply_in_a_translated_attempt_file():
    """run_seq2seq.py:425-440: G keeps the prompt's rate; the optimizer's eps becomes 1e-6."""
    from peftlab.seeds import translate_mapping
    from peftlab.train.schema import RunConfig
    seed = {"model_name_or_path": "t5-base", "task_name": ["rte"], "do_train": True, "learning_rate": 0.3,
            "attn_prefix_tuning": True, "attn_method": "sub", "load_prefix_embeddings": True,
            "prompt_embedding_path": ["a.pt", "b.pt"], "attn_learning_rate": 0.1}
    config = RunConfig.from_dict(translate_mapping(seed, "attempt/configs/x.json").config)
    assert config.train.param_groups == () and config.train.learning_rate == 0.3
    assert config.train.adam_epsilon == 1e-6 and config.method_config().compat == "attempt"
