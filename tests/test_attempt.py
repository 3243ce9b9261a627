"""ATTEMPT and SPoT: counts on T5-base, mixing weights, multi-task routing, source prompts, bad input."""
from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

import peftlab as pl
from peftlab import observe
from peftlab.io import WEIGHTS_FILE
from peftlab.methods.attempt import mixing_weights
from peftlab.params_table import count
from tiny import tiny_batch, tiny_model


def _saved_prompt(tmp_path, arch, seed, length=4):
    model = tiny_model(arch)
    pl.attach(model, pl.PromptTuning(length=length, seed=seed), "p")
    return str(pl.save(model, tmp_path / f"{arch}_{seed}_{length}")), model.peftlab_adapters["p"].prompt.embedding


def _provider(model, name="a"):
    return model.peftlab_adapters[name].prompt


@pytest.mark.parametrize("train_layer_norm,expected", [(False, 230_400), (True, 231_936)])
def test_attempt_on_t5_base_trains_the_papers_count(train_layer_norm, expected):
    """Target prompt 100x768 + W_down 768x100 + W_up 100x768 (+ LayerNorm 2x768); sources are frozen."""
    config = pl.Attempt(num_sources=6, length=100, train_layer_norm=train_layer_norm)
    trainable, _ = count("t5-base", config)
    assert trainable == expected


def test_weights_sum_to_one_per_example_and_are_recorded(tmp_path):
    sources = [_saved_prompt(tmp_path, "t5", s)[0] for s in range(3)]
    model, batch = tiny_model("t5"), tiny_batch("t5")
    pl.attach(model, pl.Attempt(sources=sources, attn_hidden=8), "a")
    with observe.capture() as seen, torch.no_grad():
        model(**batch)
    recorded = seen["attempt/a/default"]
    assert recorded["labels"] == ["t5_0_4", "t5_1_4", "t5_2_4", "target"]
    assert recorded["weights"].shape == (2, 4)
    torch.testing.assert_close(recorded["weights"].sum(-1), torch.ones(2), rtol=0, atol=1e-6)
    embeds = model.encoder.embed_tokens(batch["input_ids"])
    direct = mixing_weights(model, "a", embeds, batch["attention_mask"])
    torch.testing.assert_close(direct, recorded["weights"], rtol=0, atol=1e-6)


def test_prompt_is_target_plus_attention_weighted_sum(tmp_path):
    """P = P_target + sum_j a_j P_j over the sources and the target, a from max-pooled inputs, T = d*e."""
    sources = [_saved_prompt(tmp_path, "gpt2", s)[1] for s in range(2)]
    paths = [_saved_prompt(tmp_path, "gpt2", s)[0] for s in range(2)]
    model, batch = tiny_model("gpt2"), tiny_batch("gpt2")
    pl.attach(model, pl.Attempt(sources=paths, attn_hidden=8, target_init=1), "a")
    provider = _provider(model)
    torch.testing.assert_close(provider.targets[0], sources[1], rtol=0, atol=0)   # starts from source 1
    with torch.no_grad():
        provider.targets.add_(0.3)
        embeds = model.get_input_embeddings()(batch["input_ids"])
        mask = batch["attention_mask"]
        pooled = torch.stack([embeds[i, mask[i] == 1].amax(0) for i in range(2)])
        h = torch.nn.functional.layer_norm(provider.up(torch.nn.functional.silu(provider.down(pooled))), (16,))
        target = provider.targets[0]
        keys = torch.stack([sources[0].amax(0), sources[1].amax(0), target.amax(0)])
        a = torch.softmax(h @ keys.T / (16 * math.e), dim=-1)
        expected = target + a[:, 0, None, None] * sources[0] + a[:, 1, None, None] * sources[1] \
            + a[:, 2, None, None] * target
        got = provider(embeds, mask, None)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_mixed_batch_rows_use_their_own_tasks_target_prompt(tmp_path):
    paths = [_saved_prompt(tmp_path, "t5", s)[0] for s in range(2)]
    model, batch = tiny_model("t5"), tiny_batch("t5", batch=4)
    pl.attach(model, pl.Attempt(sources=paths, tasks=("rte", "mrpc"), attn_hidden=8), "a")
    task_ids = torch.tensor([0, 1, 1, 0])
    with torch.no_grad(), observe.capture() as seen:
        before = model(**batch, task_ids=task_ids).logits
        _provider(model).targets[1].add_(0.5)            # move the mrpc prompt only
        after = model(**batch, task_ids=task_ids).logits
    moved = (after - before).abs().amax(dim=(1, 2))
    assert torch.all(moved[[1, 2]] > 1e-4) and torch.all(moved[[0, 3]] == 0)
    assert seen["attempt/a/rte"]["weights"].shape == (2, 3) and seen["attempt/a/mrpc"]["weights"].shape == (2, 3)


def test_multi_task_batch_without_or_with_bad_task_ids_is_refused(tmp_path):
    paths = [_saved_prompt(tmp_path, "gpt2", 0)[0]]
    model, batch = tiny_model("gpt2"), tiny_batch("gpt2")
    pl.attach(model, pl.Attempt(sources=paths, tasks=("a", "b"), attn_hidden=8), "x")
    with pytest.raises(pl.PeftlabError, match="needs task_ids"):
        model(**batch)
    with pytest.raises(pl.PeftlabError, match=r"task_ids \[0, 2\]"):
        model(**batch, task_ids=torch.tensor([0, 2]))
    assert model(**batch, task_ids=torch.tensor([1, 0])).logits.shape == (2, 11, 96)


def test_sources_are_frozen_and_not_saved_and_save_prompt_only_keeps_the_targets(tmp_path):
    paths = [_saved_prompt(tmp_path, "bart", s)[0] for s in range(2)]
    model = tiny_model("bart")
    pl.attach(model, pl.Attempt(sources=paths, attn_hidden=8), "full")
    pl.attach(model, pl.Attempt(sources=paths, attn_hidden=8, save_prompt_only=True), "slim")
    full = load_file(pl.save(model, tmp_path / "full", "full") / WEIGHTS_FILE)
    slim = load_file(pl.save(model, tmp_path / "slim", "slim") / WEIGHTS_FILE)
    assert set(full) == {"home.prompt.targets", "home.prompt.down.weight", "home.prompt.up.weight"}
    assert set(slim) == {"home.prompt.targets"}
    spot = tiny_model("bart")   # a saved ATTEMPT target prompt is itself a source
    pl.attach(spot, pl.SPoT(sources=[str(tmp_path / "slim")]), "s")
    assert torch.equal(spot.peftlab_adapters["s"].prompt.embedding, slim["home.prompt.targets"][0])


def test_spot_starts_from_the_saved_prompt_or_the_exact_mean(tmp_path):
    (one, p1), (two, p2) = _saved_prompt(tmp_path, "bert", 1), _saved_prompt(tmp_path, "bert", 2)
    model = tiny_model("bert")
    pl.attach(model, pl.SPoT(sources=[one]), "single")
    assert torch.equal(model.peftlab_adapters["single"].prompt.embedding, p1)
    pl.attach(model, pl.SPoT(sources=[one, two]), "mean")
    assert torch.equal(model.peftlab_adapters["mean"].prompt.embedding, torch.stack([p1, p2]).mean(0))


def test_source_prompt_of_another_width_is_refused(tmp_path):
    wide = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=96, n_embd=24, n_layer=1, n_head=4, n_positions=64))
    pl.attach(wide, pl.PromptTuning(length=4), "p")
    path = str(pl.save(wide, tmp_path / "wide"))
    for config in (pl.SPoT(sources=[path]), pl.Attempt(sources=[path])):
        model = tiny_model("gpt2")
        with pytest.raises(pl.PeftlabError, match="has width 24, the model's hidden size is 16"):
            pl.attach(model, config, "a")
        assert not hasattr(model, "_peftlab")


def test_bad_attempt_configs_and_sources(tmp_path):
    with pytest.raises(pl.PeftlabError, match="needs sources"):
        pl.Attempt()
    with pytest.raises(pl.PeftlabError, match="target_init=2"):
        pl.Attempt(num_sources=2, target_init=2)
    with pytest.raises(pl.PeftlabError, match="needs at least one saved prompt"):
        pl.SPoT()
    lora = tiny_model("gpt2")
    pl.attach(lora, pl.LoRA(), "l")
    path = str(pl.save(lora, tmp_path / "lora"))
    with pytest.raises(pl.PeftlabError, match="not a saved prompt"):
        pl.attach(tiny_model("gpt2"), pl.SPoT(sources=[path]), "a")
    short = _saved_prompt(tmp_path, "gpt2", 0, length=3)[0]
    with pytest.raises(pl.PeftlabError, match="has 3 tokens"):
        pl.attach(tiny_model("gpt2"), pl.Attempt(sources=[_saved_prompt(tmp_path, "gpt2", 1)[0], short]), "a")


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_single_task_attempt_generates_as_a_manual_loop_does(arch, tmp_path):
    from test_prompt import generate_vs_manual
    paths = [_saved_prompt(tmp_path, arch, s)[0] for s in range(2)]
    model = tiny_model(arch)
    pl.attach(model, pl.Attempt(sources=paths, attn_hidden=8), "a")
    with torch.no_grad():
        _provider(model).targets.mul_(4.0)
    generated, manual, gen_logits, manual_logits = generate_vs_manual(model, arch)
    assert torch.equal(generated, manual)
    torch.testing.assert_close(gen_logits, manual_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_multi_task_generate_takes_task_ids_and_matches_the_manual_loop(arch, tmp_path):
    paths = [_saved_prompt(tmp_path, arch, s)[0] for s in range(2)]
    model = tiny_model(arch)
    pl.attach(model, pl.Attempt(sources=paths, tasks=("x", "y"), attn_hidden=8), "a")
    with torch.no_grad():
        _provider(model).targets[1].mul_(6.0)
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(2))
    task_ids = torch.tensor([1, 0])
    model.generation_config.eos_token_id = None
    out = model.generate(input_ids=ids, task_ids=task_ids, max_new_tokens=3, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        if arch == "t5":
            start = torch.zeros(2, 1, dtype=torch.long)
            first = model(input_ids=ids, decoder_input_ids=start, task_ids=task_ids).logits[:, -1]
        else:
            first = model(input_ids=ids, task_ids=task_ids).logits[:, -1]
    torch.testing.assert_close(out.logits[0], first, rtol=0, atol=1e-5)
    beams = model.generate(input_ids=ids, task_ids=task_ids, max_new_tokens=2, num_beams=2, do_sample=False)
    assert beams.shape[0] == 2
    with pytest.raises(pl.PeftlabError, match="needs task_ids"):
        model.generate(input_ids=ids, max_new_tokens=1)
    pl.detach(model)
    assert "generate" not in model.__dict__


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_causal_lms_attempt_prompt_reads_the_source_never_the_target(arch, tmp_path):
    """Every position attends to the prompt, so a prompt pooled over the target would leak the answer."""
    paths = [_saved_prompt(tmp_path, arch, s)[0] for s in range(2)]
    model = tiny_model(arch)
    pl.attach(model, pl.Attempt(sources=paths, attn_hidden=8), "a")
    seen = []
    handle = _provider(model).register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    ids = torch.randint(3, 90, (2, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100                      # 5 source tokens, 3 target tokens
    other = ids.clone()
    other[:, 5:] = (other[:, 5:] + 7) % 90 + 3   # another answer, same source
    with torch.no_grad():
        model(input_ids=ids, labels=labels)
        model(input_ids=other, labels=labels.where(labels == -100, other))
        model(input_ids=other)                # no labels: the whole input is the source
    handle.remove()
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    assert not torch.equal(seen[0], seen[2])
