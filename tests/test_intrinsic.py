"""Intrinsic SAID / DID: the Fastfood projection against the literal formula, norm preservation,
θ = θ⁰ + λ P(z) reaching the forward, only z and λ training, saving, and bad input."""
from __future__ import annotations

import pytest
import safetensors.torch
import scipy.linalg
import torch
from torch.func import functional_call

import peftlab as pl
from peftlab.core import named_base_parameters
from peftlab.errors import PeftlabError
from peftlab.methods.intrinsic import IntrinsicDID
from peftlab.ops.fastfood import (FastfoodPieces, Workspace, draw_pieces, fastfood, fastfood_rows, next_power_of_two,
                                  row_offsets)
from tiny import tiny_batch, tiny_model


# --- the projection ---------------------------------------------------------------------------------

def _literal_fastfood(z, size, B, perm, G):
    """(H G Π H B z_pad)[:D] / (σ √(D/L)) with dense Hadamard matrices, exactly as DESIGN §3 writes it."""
    L = B.shape[0]
    H = torch.tensor(scipy.linalg.hadamard(L), dtype=torch.float64)
    z_pad = torch.zeros(L, dtype=torch.float64)
    z_pad[:min(L, z.shape[0])] = z[:L]
    sigma = torch.sqrt(L * (G ** 2).sum())
    return (H @ (G * (H @ (B * z_pad))[perm]))[:size] / (sigma * (size / L) ** 0.5)


@pytest.mark.parametrize("size,z_length", [(100, 7), (100, 300), (64, 64), (33, 5), (700, 40), (5, 1)])
def test_fastfood_equals_the_literal_formula(size, z_length):
    g = torch.Generator().manual_seed(size + z_length)
    L = next_power_of_two(size)
    B = torch.randint(0, 2, (L,), generator=g).double() * 2 - 1
    perm, G = torch.randperm(L, generator=g), torch.randn(L, generator=g, dtype=torch.float64)
    short = min(L, next_power_of_two(z_length))
    pieces = FastfoodPieces(B[:short], perm % short, G, float(1 / (torch.sqrt(L * (G ** 2).sum()) * (size / L) ** 0.5)))
    z = torch.randn(z_length, dtype=torch.float64)
    torch.testing.assert_close(fastfood(z, size, pieces), _literal_fastfood(z, size, B, perm, G), rtol=1e-9, atol=1e-12)


def test_fastfood_keeps_norms_in_expectation():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, generator=g, dtype=torch.float64)
    ratios = []
    for _ in range(200):
        pieces = draw_pieces(300, 50, g)
        ratios.append((fastfood(z, 300, pieces).norm() ** 2 / z.norm() ** 2).item())
    ratios = torch.tensor(ratios)
    # E = 1; one draw spreads by ~0.3 here, so the mean of 200 is 1 ± 0.02 (3 sigma ~ 0.06)
    assert abs(ratios.mean().item() - 1.0) < 0.06, ratios.mean()
    assert ratios.std().item() > 0.01      # genuinely random draws, not a constant


def test_dense_projection_keeps_norms_in_expectation():
    model = tiny_model("bert")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=200, projection="dense", said=False), name="d")
    projector = model.peftlab_adapters["d"].intrinsic
    g = torch.Generator().manual_seed(1)
    ratios = []
    with torch.no_grad():
        for _ in range(50):
            projector.z.copy_(torch.randn(200, generator=g))
            total = sum(d.norm() ** 2 for d in projector.deltas())
            ratios.append((total / len(projector.sizes) / projector.z.norm() ** 2).item())
    assert abs(sum(ratios) / len(ratios) - 1.0) < 0.05


# --- attached to a model --------------------------------------------------------------------------------

def _theta(model, name):
    """θ⁰ + λ P(z) for every base tensor, by name, computed outside the hooks."""
    projector = model.peftlab_adapters[name].intrinsic
    hooks_tensors = {id(p): i for i, p in enumerate(_unique(model))}
    deltas = projector.deltas()
    return {n: p + deltas[hooks_tensors[id(p)]].view(p.shape) for n, p in named_base_parameters(model)}


def _unique(model):
    seen, out = set(), []
    for _, p in named_base_parameters(model):
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


@pytest.mark.parametrize("arch,projection", [("t5", "fastfood"), ("gpt2", "fastfood"), ("bert", "dense")])
def test_forward_uses_theta_zero_plus_lambda_times_projection(arch, projection):
    model = tiny_model(arch)
    batch = tiny_batch(arch)
    with torch.no_grad():
        base = model(**batch).logits
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=300, projection=projection), name="s")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, rtol=0, atol=0)    # z = 0: exactly the base
        home = model.peftlab_adapters["s"].intrinsic
        home.z.normal_(std=0.5)
        home.said_lambda.uniform_(0.5, 1.5)
        out = model(**batch).logits
        theta = _theta(model, "s")
        pl.deactivate(model)
        expected = functional_call(model, theta, args=(), kwargs=batch, tie_weights=False).logits
        torch.testing.assert_close(model(**batch).logits, base, rtol=0, atol=0)    # inactive: the base
    assert not torch.allclose(out, base, atol=1e-3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_parameters_are_the_original_objects_after_forward_even_when_it_raises():
    model = tiny_model("t5")
    originals = {n: p for n, p in named_base_parameters(model)}
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=100), name="s")
    with torch.no_grad():
        model.peftlab_adapters["s"].intrinsic.z.normal_()
    model(**tiny_batch("t5"))
    with pytest.raises(Exception):
        model(input_ids=torch.full((1, 3), 10_000))           # out of vocabulary: raises inside forward
    assert all(p is originals[n] for n, p in named_base_parameters(model))
    model(**tiny_batch("t5"))                                 # and the next forward still substitutes
    assert all(isinstance(p, torch.nn.Parameter) for _, p in named_base_parameters(model))


def test_encoder_called_alone_sees_theta_as_generate_does():
    model = tiny_model("t5")
    batch = tiny_batch("t5")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=100), name="s")
    with torch.no_grad():
        model.peftlab_adapters["s"].intrinsic.z.normal_()
        encoder = model.get_encoder()
        out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        theta = {n[len("encoder."):]: t for n, t in _theta(model, "s").items() if n.startswith("encoder.")}
        generated = model.generate(input_ids=batch["input_ids"], max_new_tokens=3, do_sample=False)
        pl.deactivate(model)          # else the hooks would add δ on top of the substituted θ
        expected = functional_call(encoder, theta, args=(), tie_weights=False,
                                   kwargs={"input_ids": batch["input_ids"],
                                           "attention_mask": batch["attention_mask"]}).last_hidden_state
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert generated.shape[0] == 2


def test_said_training_moves_only_z_and_lambda():
    model = tiny_model("gpt2")
    batch = tiny_batch("gpt2")
    base = {n: p.detach().clone() for n, p in named_base_parameters(model)}
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=150), name="s")
    projector = model.peftlab_adapters["s"].intrinsic
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(projector.z), id(projector.said_lambda)}
    assert sum(p.numel() for p in trainable) == 150
    opt = torch.optim.Adam(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert projector.z.abs().sum() > 0
    assert not torch.equal(projector.said_lambda, torch.ones_like(projector.said_lambda))
    assert losses[-1] < losses[0]
    for n, p in named_base_parameters(model):
        assert torch.equal(p, base[n]), n


def test_did_trains_z_alone_with_all_entries():
    model = tiny_model("bert")
    pl.attach(model, IntrinsicDID(intrinsic_dim=64), name="d")
    projector = model.peftlab_adapters["d"].intrinsic
    assert projector.said_lambda is None and projector.z.numel() == 64
    assert pl.trainable_parameters(model)[0] == 64 + sum(p.numel() for p in model.classifier.parameters())


def test_saved_file_holds_z_and_lambda_only_and_loading_reproduces_outputs(tmp_path):
    model = tiny_model("t5")
    batch = tiny_batch("t5")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=120, seed=7), name="s")
    with torch.no_grad():
        model.peftlab_adapters["s"].intrinsic.z.normal_()
        expected = model(**batch).logits
    pl.save(model, tmp_path / "s")
    saved = safetensors.torch.load_file(str(tmp_path / "s" / "peftlab_weights.safetensors"))
    assert sorted(saved) == ["home.intrinsic.said_lambda", "home.intrinsic.z"]
    assert sum(t.numel() for t in saved.values()) == 120
    fresh = tiny_model("t5")
    pl.load(fresh, tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected, rtol=0, atol=0)


def test_tied_weights_are_one_tensor():
    model = tiny_model("t5")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=100), name="s")
    unique = len({id(p) for _, p in named_base_parameters(model)})
    assert model.peftlab_adapters["s"].intrinsic.said_lambda.numel() == unique < len(list(named_base_parameters(model)))


# --- bad input ----------------------------------------------------------------------------------------

def test_intrinsic_dim_not_above_the_tensor_count_is_an_error_and_changes_nothing():
    model = tiny_model("t5")
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PeftlabError, match=r"intrinsic_dim 10 must exceed the number of parameter tensors \(\d+\)"):
        pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=10))
    assert not hasattr(model, "_peftlab") and not hasattr(model, "peftlab_adapters")
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    pl.attach(model, IntrinsicDID(intrinsic_dim=10))        # DID has no λ: any d' >= 1 works


def test_unknown_projection_is_named():
    with pytest.raises(PeftlabError, match="'hadamard' is not one of"):
        pl.IntrinsicSAID(projection="hadamard")
    with pytest.raises(PeftlabError, match="intrinsic_dim must be >= 1, got 0"):
        pl.IntrinsicSAID(intrinsic_dim=0)


def test_dense_projection_too_large_for_the_model_is_refused(monkeypatch):
    import peftlab.methods.intrinsic as intrinsic
    monkeypatch.setattr(intrinsic, "DENSE_LIMIT", 1000)
    model = tiny_model("bert")
    with pytest.raises(PeftlabError, match="projection 'dense' needs a"):
        pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=200, projection="dense"))
    assert not hasattr(model, "_peftlab")


def test_gradient_checkpointing_is_refused_in_training():
    model = tiny_model("gpt2")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=100), name="s")
    # transformers 5.23 renamed gradient_checkpointing_enable (now deprecated) to activation_checkpointing_enable
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    with pytest.raises(PeftlabError, match="checkpointing"):
        model(**tiny_batch("gpt2"))
    assert all(isinstance(p, torch.nn.Parameter) for _, p in named_base_parameters(model))
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    model(**tiny_batch("gpt2")).loss.backward()


# --- the reused workspace of the long transform ---------------------------------------------------------

def _rows_inputs(seed, k=3, length=64, short=8):
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (k, short), generator=g).double() * 2 - 1
    index = row_offsets(torch.stack([torch.randperm(length, generator=g) % short for _ in range(k)]).int(), short)
    gauss = torch.randn(k, length, generator=g, dtype=torch.float64)
    return signs, index, gauss


@pytest.mark.parametrize("sizes", [(64, 64, 64), (50, 64, 1), (33, 17, 64)])
def test_fastfood_rows_in_a_workspace_equal_fresh_buffers_and_pass_gradcheck(sizes):
    signs, index, gauss = _rows_inputs(0)
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(3, dtype=torch.float64, requires_grad=True)
    workspace = Workspace()
    fresh = fastfood_rows(z, signs, index, gauss, lam, sizes)
    reused = fastfood_rows(z, signs, index, gauss, lam, sizes, workspace)
    assert [r.shape[0] for r in reused] == list(sizes)
    for a, b in zip(fresh, reused):
        torch.testing.assert_close(a, b)

    weights = [torch.randn(size, dtype=torch.float64) for size in sizes]

    def weighted(z, lam):        # uses the rows at once and keeps none, as the forward hook's θ⁰ + δ does
        rows = fastfood_rows(z, signs, index, gauss, lam, sizes, workspace)
        return sum((w * row).sum() for w, row in zip(weights, rows))
    assert torch.autograd.gradcheck(weighted, (z, lam))


def test_workspace_rows_survive_a_second_forward_before_backward():
    """Gradient accumulation: two forwards overwrite the buffers before either backward runs."""
    signs, index, gauss = _rows_inputs(1)
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    one = torch.ones(3, dtype=torch.float64)
    workspace = Workspace()
    weights = [torch.randn(size, dtype=torch.float64) for size in (64, 40, 64)]

    def loss(z, workspace=None):
        return sum((w * row).sum() for w, row in zip(weights, fastfood_rows(z, signs, index, gauss, one, (64, 40, 64),
                                                                            workspace)))
    first, second = loss(z, workspace), loss(z * 2, workspace)
    buffers = [t.data_ptr() for t in workspace.buffers]
    (first + 3 * second).backward()
    expected = torch.autograd.grad(loss(z) + 3 * loss(z * 2), z)[0]
    torch.testing.assert_close(z.grad, expected)
    assert [t.data_ptr() for t in workspace.buffers] == buffers        # the same memory, step after step


def test_a_trained_said_model_can_be_copied():
    import copy
    model = tiny_model("t5")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=200), name="s")
    model.train()
    model(**tiny_batch("t5")).loss.backward()
    twin = copy.deepcopy(model)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(**tiny_batch("t5")).logits, model(**tiny_batch("t5")).logits)


def test_a_row_no_one_used_contributes_nothing():
    signs, index, gauss = _rows_inputs(2)
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    one = torch.ones(3, dtype=torch.float64)
    rows = fastfood_rows(z, signs, index, gauss, one, (64, 64, 64), Workspace())
    (rows[0].sum() + rows[2].sum()).backward()
    fresh = fastfood_rows(z, signs, index, gauss, one, (64, 64, 64))
    torch.testing.assert_close(z.grad, torch.autograd.grad(fresh[0].sum() + fresh[2].sum(), z)[0])


def test_the_docs_dense_example_fits_the_limit_the_docs_state():
    """docs/methods_compacter.md: dense at intrinsic_dim=500 works up to 268,435 parameters."""
    import transformers as tf
    from peftlab.methods.intrinsic import DENSE_LIMIT
    assert DENSE_LIMIT // 500 == 268_435
    config = tf.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = tf.BertForSequenceClassification(config)
    assert 200_000 < sum(p.numel() for p in model.parameters()) <= 268_435
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=500, projection="dense", seed=3))
    bigger = tf.BertForSequenceClassification(tf.BertConfig(**{**config.to_dict(), "vocab_size": 8000}))
    with pytest.raises(PeftlabError, match=r"over the limit of 134,217,728 entries .* at most [\d,]+ parameters"):
        pl.attach(bigger, pl.IntrinsicSAID(intrinsic_dim=500, projection="dense"))
