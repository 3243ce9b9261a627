"""Prompt tuning in mixed-adapter batches: rows of an `adapter_names` batch, a BatchSplit batch and a
ParallelBlock batch equal single-adapter runs row by row, in forward and through generate(); routing
that cannot be built (rows without a prompt, prompts of different lengths) fails cleanly."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from tiny import tiny_batch, tiny_model


def _model(arch, lengths=(4, 4, 4), names=("a", "b", "c")):
    model = tiny_model(arch)
    for seed, (name, length) in enumerate(zip(names, lengths)):
        pl.attach(model, pl.PromptTuning(length=length, seed=seed), name)
    return model


def _inputs(arch, batch=5, length=7):
    out = {k: v for k, v in tiny_batch(arch, batch=batch, length=length).items() if k != "labels"}
    if arch == "t5":
        out["decoder_input_ids"] = out["input_ids"][:, :3]
    return out


def _outputs(model, batch, **kw):
    """Logits; for the tiny BERT (whose 0.02-std classifier barely moves) its last hidden state."""
    with torch.no_grad():
        if model.config.model_type == "bert":
            return model(**batch, **kw, output_hidden_states=True).hidden_states[-1]
        return model(**batch, **kw).logits


def _single_runs(model, batch, blocks):
    out = {}
    for key, block in blocks.items():
        pl.activate(model, block) if block != "__base__" else pl.deactivate(model)
        out[key] = _outputs(model, batch)
    return out


def _assert_rows(mixed, single, keys):
    for row, key in enumerate(keys):
        torch.testing.assert_close(mixed[row], single[key][row], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama", "bert"])
def test_adapter_names_rows_equal_single_prompt_runs(arch):
    model = _model(arch)
    batch = _inputs(arch)
    names = ["b", "a", "c", "b", "a"]   # interleaved: rows are gathered and put back in order
    single = _single_runs(model, batch, {n: n for n in "abc"})
    assert not torch.allclose(single["a"], single["b"], atol=1e-3)
    pl.activate(model, "c")
    _assert_rows(_outputs(model, batch, adapter_names=names), single, names)
    torch.testing.assert_close(_outputs(model, batch), single["c"], rtol=0, atol=0)   # routing was per call


@pytest.mark.parametrize("arch", ["t5", "gpt2", "llama", "bert"])
def test_batch_split_rows_equal_single_prompt_runs(arch):
    model = _model(arch)
    batch = _inputs(arch)
    single = _single_runs(model, batch, {n: n for n in "abc"})
    pl.activate(model, pl.BatchSplit("a", pl.Stack("b"), "c", sizes=[2, 1, 2]))
    _assert_rows(_outputs(model, batch), single, "aabcc")


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_stacked_prompts_in_a_split_equal_the_stacked_run(arch):
    """A row group may stack two prompts (2 + 2 tokens) beside a 4-token prompt: same total length."""
    model = _model(arch, lengths=(2, 2, 4))
    batch = _inputs(arch, batch=3)
    single = _single_runs(model, batch, {"ab": ("a", "b"), "c": "c"})
    pl.activate(model, pl.BatchSplit(pl.Stack("a", "b"), "c", sizes=[2, 1]))
    _assert_rows(_outputs(model, batch), single, ["ab", "ab", "c"])


def test_parallel_block_gives_each_copy_its_own_prompt():
    model = _model("gpt2", names=("a", "b"))
    batch = _inputs("gpt2", batch=2)
    single = _single_runs(model, batch, {"a": "a", "b": "b"})
    pl.activate(model, pl.ParallelBlock("a", "b"))
    out = _outputs(model, batch)
    torch.testing.assert_close(out, torch.cat([single["a"], single["b"]]), rtol=0, atol=1e-5)


def test_rows_routed_to_other_methods_only_get_no_prompt():
    """With a prompt adapter attached but no row routed to it, the prompt stays out of the batch."""
    model = _model("llama", names=("p",), lengths=(4,))
    pl.attach(model, pl.LoRA(r=2, slots=("attn.q",)), "l")
    with torch.no_grad():
        for p in pl.core.attachment_parameters(model, "l"):
            p.normal_()
    batch = _inputs("llama", batch=2)
    single = _single_runs(model, batch, {"l": "l", "base": "__base__"})
    _assert_rows(_outputs(model, batch, adapter_names=["l", "__base__"]), single, ["l", "base"])


_GENERATE = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)


def _generate_singles(model, batch, names, **kw):
    out = {}
    for name in set(names):
        pl.activate(model, name)
        out[name] = model.generate(**batch, **kw)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_generate_with_adapter_names_equals_single_prompt_generation(arch):
    model = _model(arch)
    batch = {k: v for k, v in _inputs(arch, batch=3, length=5).items() if k != "decoder_input_ids"}
    batch["attention_mask"][0, -2:] = 1   # no padding: decoder-only rows then need no left padding
    kw = dict(_GENERATE, pad_token_id=model.config.pad_token_id)
    names = ["c", "a", "b"]
    single = _generate_singles(model, batch, names, **kw)
    assert not torch.equal(single["a"], single["c"])
    pl.activate(model, "b")
    mixed = model.generate(**batch, adapter_names=names, **kw)
    for row, name in enumerate(names):
        assert torch.equal(mixed[row], single[name][row]), (row, name)
    beams = model.generate(**batch, adapter_names=names, num_beams=2, **kw)   # rows repeated per beam
    single_beams = _generate_singles(model, batch, names, num_beams=2, **kw)
    for row, name in enumerate(names):
        assert torch.equal(beams[row], single_beams[name][row]), (row, name)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_generate_under_a_batch_split_equals_single_prompt_generation(arch):
    model = _model(arch)
    batch = {k: v for k, v in _inputs(arch, batch=3, length=5).items() if k != "decoder_input_ids"}
    batch["attention_mask"][0, -2:] = 1
    kw = dict(_GENERATE, pad_token_id=model.config.pad_token_id)
    single = _generate_singles(model, batch, ["a", "c"], **kw)
    pl.activate(model, pl.BatchSplit("a", "c", sizes=[1, 2]))
    mixed = model.generate(**batch, **kw)
    for row, name in enumerate("acc"):
        assert torch.equal(mixed[row], single[name][row]), (row, name)


# --- routing that cannot be built: clear errors, model unchanged ------------------------------------

def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, list(pl.adapters(model)), \
        pl.core.require(model).active


def _assert_unchanged(model, snapshot, batch, expected):
    state, adapters, active = snapshot
    assert list(pl.adapters(model)) == adapters and pl.core.require(model).active == active
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    torch.testing.assert_close(_outputs(model, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
@pytest.mark.parametrize("names,message", [
    (["a", "__base__", "a"], r"rows \[1\] are routed to no prompt adapter while other rows use 'a'"),
    (["a", "l", "a"], r"rows \[1\] are routed to no prompt adapter"),
    (["a", "long", "a"], r"different lengths \('a' 4, 'long' 6 tokens\)"),
])
def test_bad_prompt_routing_raises_and_leaves_the_model_unchanged(arch, names, message):
    model = _model(arch, names=("a", "long"), lengths=(4, 6))
    pl.attach(model, pl.LoRA(r=2, slots=("attn.q",)), "l")
    pl.activate(model, "a")
    batch = _inputs(arch, batch=3)
    expected = _outputs(model, batch)
    snapshot = _snapshot(model)
    with pytest.raises(pl.PeftlabError, match=message):
        _outputs(model, batch, adapter_names=names)
    _assert_unchanged(model, snapshot, batch, expected)


def test_batch_split_of_prompts_with_different_lengths_raises():
    model = _model("llama", names=("a", "long"), lengths=(4, 6))
    pl.activate(model, pl.BatchSplit("a", "long", sizes=[1, 1]))
    with pytest.raises(pl.PeftlabError, match=r"'a' 4, 'long' 6 tokens"):
        _outputs(model, _inputs("llama", batch=2))


def test_detach_forgets_the_prompt_and_the_next_adapter_builds_the_rows():
    model = _model("gpt2")
    batch = _inputs("gpt2", batch=2)
    pl.detach(model, "a")   # "a" built routed rows; now "b" does
    single = _single_runs(model, batch, {"b": "b", "c": "c"})
    _assert_rows(_outputs(model, batch, adapter_names=["c", "b"]), single, ["c", "b"])
    for name in ("b", "c"):
        pl.detach(model, name)
    assert "_peftlab_prompt_providers" not in model.__dict__


def test_multi_task_attempt_rows_keep_their_task_ids_when_routed(tmp_path):
    """ATTEMPT reads each row's task id: routed rows must take theirs along (interleaved rows)."""
    paths = []
    for seed in range(2):
        source = tiny_model("gpt2")
        pl.attach(source, pl.PromptTuning(length=4, seed=seed), "p")
        paths.append(str(pl.save(source, tmp_path / f"source{seed}")))
    model = tiny_model("gpt2")
    pl.attach(model, pl.PromptTuning(length=4, seed=7), "p")
    pl.attach(model, pl.Attempt(sources=paths, tasks=("x", "y"), attn_hidden=8), "att")
    noise = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.peftlab_adapters["att"].prompt.targets.add_(noise)   # the two tasks' prompts now differ
    batch, task_ids = _inputs("gpt2", batch=4), torch.tensor([1, 0, 0, 1])
    single = {}
    for name in ("p", "att"):
        pl.activate(model, name)
        single[name] = _outputs(model, batch, task_ids=task_ids)
    names = ["att", "p", "att", "p"]
    _assert_rows(_outputs(model, batch, adapter_names=names, task_ids=task_ids), single, names)
    other = _outputs(model, batch, adapter_names=names, task_ids=1 - task_ids)
    assert not torch.allclose(other[0], single["att"][0], atol=1e-3)   # the task id does change the row
