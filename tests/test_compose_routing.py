"""Mixed-adapter batches: BatchSplit and per-example `adapter_names` rows equal single-adapter runs,
in forward and through generate(); bad routing and bad blocks fail cleanly with the model unchanged."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from peftlab.blocks import Mixing
from peftlab.core import attachment_parameters
from tiny import tiny_batch, tiny_model

METHODS = {
    "lora": lambda: pl.LoRA(r=4, slots=("attn.q", "attn.v", "ffn.out")),
    "bottleneck": lambda: pl.Houlsby(reduction_factor=2),
    "ia3": lambda: pl.IA3(),   # scales the FFN's input: routed before the base call
}


def _model(arch, method, names=("a", "b", "c")):
    model = tiny_model(arch)
    g = torch.Generator().manual_seed(5)
    for name in names:
        pl.attach(model, METHODS[method](), name)
        with torch.no_grad():
            for p in attachment_parameters(model, name):
                p.add_(1.5 * torch.randn(p.shape, generator=g))
    return model


def _inputs(arch, batch=5, length=7):
    return {k: v for k, v in tiny_batch(arch, batch=batch, length=length).items() if k != "labels"}


def _logits(model, batch, **kw):
    """Logits; for the tiny BERT (whose 0.02-std classifier barely moves) its last hidden state."""
    with torch.no_grad():
        if model.config.model_type == "bert":
            return model(**batch, **kw, output_hidden_states=True).hidden_states[-1]
        return model(**batch, **kw).logits


def _single_runs(model, batch, names):
    out = {}
    for name in set(names):
        if name == "__base__":
            pl.deactivate(model)
        else:
            pl.activate(model, name)
        out[name] = _logits(model, batch)
    return out


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ["bert", "llama", "t5"])
def test_adapter_names_rows_equal_single_adapter_runs(arch, method):
    model = _model(arch, method)
    batch = _inputs(arch)
    if arch == "t5":
        batch["decoder_input_ids"] = batch["input_ids"][:, :3]
    names = ["b", "a", "__base__", "b", "c"]   # interleaved on purpose: rows are gathered and scattered
    single = _single_runs(model, batch, names)
    pl.activate(model, "a")
    mixed = _logits(model, batch, adapter_names=names)
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], single[name][row], rtol=0, atol=1e-5)
    assert not torch.allclose(single["a"], single["b"], atol=1e-3)
    torch.testing.assert_close(_logits(model, batch), single["a"], rtol=0, atol=0)   # routing was per call


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_batch_split_rows_equal_single_adapter_runs(method):
    model = _model("bert", method)
    batch = _inputs("bert")
    single = _single_runs(model, batch, ["a", "b", "c"])
    pl.activate(model, pl.BatchSplit("a", pl.Stack("b"), "c", sizes=[2, 1, 2]))
    mixed = _logits(model, batch)
    for row, name in enumerate("aabcc"):
        torch.testing.assert_close(mixed[row], single[name][row], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_generate_with_adapter_names_equals_single_adapter_generation(arch, method):
    model = _model(arch, method)
    batch = _inputs(arch, batch=3, length=5)
    batch["attention_mask"][0, -2:] = 1   # no padding: decoder-only rows then need no left padding
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=model.config.pad_token_id)
    names = ["c", "__base__", "a"]
    single = {}
    for name in set(names):
        pl.deactivate(model) if name == "__base__" else pl.activate(model, name)
        single[name] = model.generate(**batch, **kwargs)
    pl.activate(model, "b")
    mixed = model.generate(**batch, adapter_names=names, **kwargs)
    for row, name in enumerate(names):
        assert torch.equal(mixed[row], single[name][row]), (row, name)
    assert not torch.equal(single["a"], single["c"])
    beams = model.generate(**batch, adapter_names=names, num_beams=2, **kwargs)   # rows repeated per beam
    assert beams.shape == mixed.shape


def test_routing_reaches_adapter_free_modules_too():
    """Rows routed to an adapter that has no part at some module just run the base there."""
    model = tiny_model("bert")
    pl.attach(model, pl.LoRA(r=2, slots=("attn.q",)), "q_only")
    pl.attach(model, pl.Pfeiffer(reduction_factor=2), "ffn_only")
    batch = _inputs("bert", batch=2)
    single = _single_runs(model, batch, ["q_only", "ffn_only"])
    mixed = _logits(model, batch, adapter_names=["ffn_only", "q_only"])
    torch.testing.assert_close(mixed[0], single["ffn_only"][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[1], single["q_only"][1], rtol=0, atol=1e-6)


# --- bad input: clear errors, model unchanged -------------------------------------------------------

def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, dict(pl.adapters(model)), \
        pl.core.require(model).active


def _assert_unchanged(model, snapshot, batch, expected):
    state, adapters, active = snapshot
    assert list(pl.adapters(model)) == list(adapters) and pl.core.require(model).active == active
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    torch.testing.assert_close(_logits(model, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("block,message", [
    (lambda: ("a", "nope"), "no adapter named 'nope'"),
    (lambda: pl.Stack("a", "bb"), "did you mean 'b'"),
    (lambda: pl.Fuse("a", pl.Stack("b", "c")), "Stack cannot be nested in Fuse"),
    (lambda: pl.Fuse("a", pl.Fuse("b", "c")), "Fuse cannot be nested in Fuse"),
    (lambda: pl.Stack("a", pl.ParallelBlock("b", "c")), "ParallelBlock cannot be nested in Stack"),
    (lambda: pl.BatchSplit("a", pl.BatchSplit("b", "c", sizes=[1, 1]), sizes=[1, 1]), "BatchSplit cannot be nested"),
    (lambda: pl.Fuse("a", "ia3"), "changes the module's input"),
    (lambda: pl.WeightedSum("a", "b", num_weight_sets=9), "num_weight_sets 9 must divide the model's 2 layers"),
    (lambda: pl.Average("a", "small"), "different shapes"),
    (lambda: pl.Average("a", "ia3"), "different methods"),
])
def test_bad_blocks_raise_and_leave_the_model_unchanged(block, message):
    model = _model("bert", "bottleneck")
    pl.attach(model, pl.IA3(), "ia3")
    pl.attach(model, pl.Houlsby(reduction_factor=4), "small")
    pl.activate(model, "a")
    batch = _inputs("bert")
    expected = _logits(model, batch)
    snapshot = _snapshot(model)
    with pytest.raises(pl.PeftlabError, match=message):
        made = block()
        # blocks that create an adapter (a fusion, a multi-adapter, an average) are attached explicitly
        (pl.attach if isinstance(made, (Mixing, pl.Average)) else pl.activate)(model, made)
    _assert_unchanged(model, snapshot, batch, expected)


@pytest.mark.parametrize("call,message", [
    (dict(adapter_names=["a", "zzz", "b", "a", "a"]), "no adapter named 'zzz'"),
    (dict(adapter_names=["a", "b"]), "2 entries for a batch of 5 rows"),
    (dict(adapter_names="a"), "must be a non-empty list of adapter names"),
    (dict(adapter_names=[]), "must be a non-empty list of adapter names"),
])
def test_bad_adapter_names_raise_and_leave_the_model_unchanged(call, message):
    model = _model("bert", "lora")
    batch = _inputs("bert")
    expected = _logits(model, batch)
    snapshot = _snapshot(model)
    with pytest.raises(pl.PeftlabError, match=message):
        _logits(model, batch, **call)
    _assert_unchanged(model, snapshot, batch, expected)


def test_batch_split_sizes_that_do_not_sum_to_the_batch_raise():
    model = _model("bert", "lora")
    pl.activate(model, pl.BatchSplit("a", "b", sizes=[2, 2]))
    batch = _inputs("bert")
    with pytest.raises(pl.PeftlabError, match=r"sizes \[2, 2\] sum to 4, but the batch has 5 rows"):
        _logits(model, batch)
    assert _logits(model, _inputs("bert", batch=4)).isfinite().all()
    with pytest.raises(pl.PeftlabError, match="sizes"):
        pl.BatchSplit("a", "b", sizes=[2])


def test_routing_refuses_while_an_adapter_is_merged():
    model = _model("bert", "lora")
    pl.merge(model, "a")
    with pytest.raises(pl.PeftlabError, match="'a' is merged into the base weights"):
        _logits(model, _inputs("bert"), adapter_names=["a", "b", "c", "a", "b"])
    pl.unmerge(model, "a")
    assert _logits(model, _inputs("bert"), adapter_names=["a", "b", "c", "a", "b"]).shape[0] == 5


def test_row_mask_tells_hooks_outside_the_layers_which_rows_they_serve():
    from peftlab.calls import row_mask
    from peftlab.state import controller_of
    model = _model("bert", "lora", names=("a", "b"))
    seen = []
    model.register_forward_pre_hook(lambda m, a, k: seen.append((row_mask(controller_of(m), "a", 4), row_mask(controller_of(m), "b", 4))),
                                    with_kwargs=True)
    _logits(model, _inputs("bert", batch=4), adapter_names=["a", "b", "a", "__base__"])
    assert seen[-1][0].tolist() == [True, False, True, False] and seen[-1][1].tolist() == [False, True, False, False]
    with pl.route(model, ["a", "b", "a", "__base__"]):   # beams: each row's copies follow it
        assert row_mask(controller_of(model), "b", 8).tolist() == [False, False, True, True, False, False, False, False]
    pl.activate(model, pl.BatchSplit("a", "b", sizes=[1, 3]))
    _logits(model, _inputs("bert", batch=4))
    assert seen[-1][0].tolist() == [True, False, False, False]
    pl.activate(model, "a")
    _logits(model, _inputs("bert", batch=4))
    assert seen[-1] == (None, None)
