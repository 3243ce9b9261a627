"""The training loop: outputs of a run, exact gradient accumulation, parameter groups, early stopping,
non-finite losses, multi-task batches, kill-and-resume, and 2 processes under `accelerate launch`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from peftlab import observe
from peftlab.errors import PeftlabError
from peftlab.train.batches import epoch_batches, shard, task_probabilities
from peftlab.train.loop import Trainer
from peftlab.train.schema import RunConfig
from test_train_support import tiny_run_config


def run(config: dict) -> tuple[Trainer, dict]:
    trainer = Trainer(RunConfig.from_dict(config))
    return trainer, trainer.run()


def weights(run_dir, which="last") -> dict:
    return load_file(str(Path(run_dir) / "checkpoints" / which / "trainable.safetensors"))


def test_a_run_writes_results_report_logs_checkpoints_and_plots(tmp_path):
    trainer, results = run(tiny_run_config(tmp_path, train={"tensorboard": True}))
    out = Path(trainer.run_dir)
    assert set(results["tasks"]["sst2"]) == {"validation", "test"}
    assert results["train"]["steps"] == 3 and results["best_step"] in (2, 3)
    assert json.loads((out / "results.json").read_text())["train"]["final_loss"] == results["train"]["final_loss"]
    assert "| sst2 | test | accuracy |" in (out / "report.md").read_text()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 3]          # every 2 steps and the last
    assert all(r["examples_per_s"] > 0 and r["loss"] > 0 for r in records if r["kind"] == "train")
    assert list((out / "tensorboard").iterdir())
    assert (out / "adapter" / "default" / "peftlab_config.json").exists()
    from peftlab.train.plots import plot_run
    assert {p.name for p in plot_run(out)} == {"loss.png", "metrics.png"}


def test_gradient_accumulation_gives_the_same_weights(tmp_path):
    base = tiny_run_config(tmp_path, train={"eval_strategy": "no", "batch_size": 8},
                           data={"max_train_samples": 21})          # 8 + 8 + 5: a ragged last batch
    run({**base, "output_dir": str(tmp_path / "a")})
    run({**base, "output_dir": str(tmp_path / "b"), "train": {**base["train"], "gradient_accumulation_steps": 4}})
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)   # summation order only


def test_parameter_groups_get_their_own_learning_rate(tmp_path):
    config = tiny_run_config(tmp_path, train={"eval_strategy": "no",
                                              "param_groups": [{"pattern": r"^classifier\.", "learning_rate": 0.0}]})
    trainer, _ = run(config)
    groups = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert groups == {"^classifier\\.": 0.0, "^classifier\\. (no decay)": 0.0, "default": 1e-2,
                      "default (no decay)": 1e-2}
    start = Trainer(RunConfig.from_dict({**config, "output_dir": str(tmp_path / "fresh")})).model
    after = trainer.model
    assert torch.equal(start.classifier.weight, after.classifier.weight)      # lr 0: untouched
    adapters = [n for n, p in after.named_parameters() if p.requires_grad and "classifier" not in n]
    before = dict(start.named_parameters())
    assert any(not torch.equal(before[n], dict(after.named_parameters())[n]) for n in adapters)


def test_early_stopping_after_patience_evaluations(tmp_path):
    config = tiny_run_config(tmp_path, train={"learning_rate": 1e-12, "eval_steps": 1, "epochs": 3,
                                              "early_stopping_patience": 2})
    _, results = run(config)
    assert results["train"]["steps"] == 3 and results["best_step"] == 1     # 9 steps planned


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_run_config(tmp_path, method={"method": "full"},
                             train={"learning_rate": 1e30, "max_grad_norm": None, "eval_steps": 1, "epochs": 3})
    with pytest.raises(PeftlabError, match=r"loss is (nan|inf) at step (\d+): stopped; last good checkpoint: .*"
                                           r"checkpoints/last \(step \d+\)") as err:
        run(config)
    step = int(str(err.value).split("at step ")[1].split(":")[0])
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())


def test_task_sampling_is_proportional_or_tempered_and_deterministic():
    assert task_probabilities([100, 300], 1.0) == pytest.approx([0.25, 0.75])
    assert task_probabilities([100, 400], 2.0) == pytest.approx([1 / 3, 2 / 3])
    mixed = epoch_batches([100, 300], 50, seed=1, epoch=0)
    assert len(mixed) == 8 and mixed == epoch_batches([100, 300], 50, seed=1, epoch=0)
    share = sum(t for batch in mixed for t, _ in batch) / 400
    assert 0.65 < share < 0.85 and len({t for t, _ in mixed[0]}) == 2          # mixed-task batches
    per_task = epoch_batches([100, 300], 50, seed=1, epoch=0, mixing="per_task")
    assert all(len({t for t, _ in batch}) == 1 for batch in per_task)
    single = epoch_batches([10], 4, seed=1, epoch=0)
    assert sorted(i for b in single for _, i in b) == list(range(10)) and single != epoch_batches([10], 4, 1, 1)
    assert shard(list(range(10)), 1, 2, 2) == [[1, 3, 5], [7, 9]]       # rank 1 of 2, 2 micro-batches


def test_multi_task_run_with_one_adapter_per_task(tmp_path):
    config = tiny_run_config(tmp_path, "t5", "rte", tasks=["rte", "cb"], adapters="per_task",
                             data={"mixing": "per_task"}, train={"eval_strategy": "no", "max_steps": 2})
    trainer, results = run(config)
    assert set(results["tasks"]) == {"rte", "cb"} and trainer.adapter_names == ["rte", "cb"]
    # no evaluation chose a best: each task's adapter is saved with its final weights
    assert all((trainer.run_dir / "adapter" / name / "peftlab_config.json").exists() for name in ("rte", "cb"))
    names = json.loads((trainer.run_dir / "config.json").read_text())["tasks"]
    assert names == ["rte", "cb"]


class _Mixer(nn.Module):
    """Stands in for a module with mixing weights (ATTEMPT, Fuse): records softmax weights in forward."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.0, 1.0]))

    def forward(self, input_ids, **_):
        weights = self.logits.softmax(-1).expand(input_ids.shape[0], 2)
        observe.record("layer0", ["a", "b"], weights)
        return weights


def test_mixing_weights_are_logged_and_plotted(tmp_path):
    from peftlab.train.logs import MIXING, RunLog, observe_mixing
    from peftlab.train.plots import plot_run
    seen = observe_mixing(_Mixer(), {"input_ids": torch.zeros(3, 4, dtype=torch.long)})
    expected = torch.tensor([0.0, 1.0]).softmax(-1).tolist()
    assert seen["layer0"]["labels"] == ["a", "b"]
    assert seen["layer0"]["weights"] == pytest.approx(expected, abs=1e-6)
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    for step in (1, 2):
        log.write({"kind": "train", "step": step, "loss": 1.0 / step})
        log.write({"step": step, "series": seen}, MIXING)
    assert {p.name for p in plot_run(tmp_path)} == {"loss.png", "mixing_layer0.png"}


def test_bf16_runs_on_cpu(tmp_path):
    _, results = run(tiny_run_config(tmp_path, train={"precision": "bf16", "max_steps": 1, "eval_strategy": "no"}))
    assert results["train"]["steps"] == 1


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path):
    config = tiny_run_config(tmp_path, train={"max_steps": 1, "eval_strategy": "no"})
    run(config)
    with pytest.raises(PeftlabError, match="a run is already there; pass --resume"):
        Trainer(RunConfig.from_dict(config))
    with pytest.raises(PeftlabError, match="nothing to resume"):
        Trainer(RunConfig.from_dict({**config, "output_dir": str(tmp_path / "other")}), resume=True)
    evaluated = {**config, "train": {**config["train"], "eval_strategy": "steps"}}
    run({**evaluated, "overwrite": True})
    assert (tmp_path / "run" / "checkpoints" / "best").exists()
    run({**config, "overwrite": True})                        # no evaluation: no best, and no stale one
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()


# --- processes: kill and resume, two processes ----------------------------------------------------

def _cli(args, env=None, launcher=None):
    command = (launcher or [sys.executable]) + ["-m", "peftlab.cli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    config = tiny_run_config(tmp_path, train={"epochs": 2, "batch_size": 4, "eval_steps": 4})  # 12 steps
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    whole = _cli([str(path), f"output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr
    killed = _cli([str(path), f"output_dir={tmp_path / 'cut'}"], env={"PEFTLAB_KILL_AT_STEP": "5"})
    assert killed.returncode == -9                                   # SIGKILL after step 5 (epoch 0)
    assert json.loads((tmp_path / "cut" / "checkpoints" / "last" / "trainer_state.json").read_text())["step"] == 4
    resumed = _cli([str(path), f"output_dir={tmp_path / 'cut'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    assert ra["tasks"] == rb["tasks"] and ra["best_step"] == rb["best_step"]
    assert rb["train"]["final_loss"] == pytest.approx(ra["train"]["final_loss"], rel=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 13))                               # no step logged twice


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate launcher not installed")
def test_two_processes_give_the_loss_of_one_with_the_same_global_batch(tmp_path):
    config = tiny_run_config(tmp_path, train={"epochs": 2, "batch_size": 8, "gradient_accumulation_steps": 2,
                                              "eval_strategy": "epoch"}, data={"max_train_samples": 21})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    one = _cli([str(path), f"output_dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = _cli([str(path), f"output_dir={tmp_path / 'two'}"], launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert (r1["processes"], r2["processes"]) == (1, 2)
    assert r2["train"]["final_loss"] == pytest.approx(r1["train"]["final_loss"], rel=1e-4)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)   # summation order only


def test_multi_task_attempt_gets_task_ids_and_its_attention_is_logged_and_plotted(tmp_path):
    from peftlab.train.plots import plot_run
    config = tiny_run_config(tmp_path, "t5", "rte", tasks=["rte", "cb"],
                             method={"method": "attempt", "num_sources": 2, "length": 3, "tasks": ["rte", "cb"]},
                             train={"eval_strategy": "no", "max_steps": 2, "log_steps": 1})
    trainer, results = run(config)
    assert trainer.task_ids and set(results["tasks"]) == {"rte", "cb"}
    records = [json.loads(line) for line in (trainer.run_dir / "mixing_weights.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    series = records[-1]["series"]
    assert series and all(sum(s["weights"]) == pytest.approx(1.0, abs=1e-5) for s in series.values())
    pngs = {p.name for p in plot_run(trainer.run_dir)}
    assert sum(name.startswith("mixing_attempt") for name in pngs) == len(series)


def test_multi_task_on_a_classification_head_is_refused(tmp_path):
    with pytest.raises(PeftlabError, match=r"a multi-task run needs a text-to-text model"):
        Trainer(RunConfig.from_dict(tiny_run_config(tmp_path, tasks=["sst2", "cola"])))


def test_a_run_without_evaluation_saves_its_final_adapter(tmp_path):
    from peftlab.io import WEIGHTS_FILE, adapter_state
    trainer, _ = run(tiny_run_config(tmp_path, train={"eval_strategy": "no", "max_steps": 2}))
    saved = load_file(str(Path(trainer.run_dir) / "adapter" / "default" / WEIGHTS_FILE))
    expected = adapter_state(trainer.model, "default")
    assert saved and set(saved) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(saved[key], tensor.detach().cpu())


def test_eval_strategy_no_never_evaluates_validation(tmp_path, monkeypatch):
    evaluated = []
    evaluate_split = Trainer.evaluate_split
    monkeypatch.setattr(Trainer, "evaluate_split",
                        lambda self, split, final=False: evaluated.append(split) or evaluate_split(self, split, final))
    trainer, results = run(tiny_run_config(tmp_path, train={"eval_strategy": "no", "eval_steps": 1}))
    assert evaluated == ["test"]            # once, after the last step: the documented result table
    assert set(results["tasks"]["sst2"]) == {"test"} and set(results["average"]) == {"test"}
    assert results["best_step"] is None and results["train"]["steps"] == 3
    records = [json.loads(line) for line in (Path(trainer.run_dir) / "log.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "eval"]
    assert "the final step's" in (Path(trainer.run_dir) / "report.md").read_text()


def test_a_run_without_mixing_weights_probes_them_once(tmp_path, monkeypatch):
    """The probe forward on validation rows runs at the first log only when nothing records mixing weights."""
    probes = []
    original = Trainer.probe_batch
    monkeypatch.setattr(Trainer, "probe_batch", lambda self: probes.append(1) or original(self))
    trainer, _ = run(tiny_run_config(tmp_path, train={"eval_strategy": "no", "max_steps": 3, "log_steps": 1}))
    assert len(probes) == 1 and not (trainer.run_dir / "mixing_weights.jsonl").exists()


def test_label_smoothing_is_the_smoothed_cross_entropy():
    """(1 - ε)·NLL + ε·mean_c(-log p_c), over the labelled positions only (HF's LabelSmoother)."""
    from peftlab.train.optim import loss_sum
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 3, 1, 4, -100], [2, 2, -100, 6, 0]])
    logp = logits[:, :-1].log_softmax(-1)                 # causal: position t predicts t + 1
    target = labels[:, 1:]
    keep = target != -100
    nll = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0][keep].sum()
    smooth = -logp.mean(-1)[keep].sum()
    torch.testing.assert_close(loss_sum("causal", logits, labels, False, 0.1), 0.9 * nll + 0.1 * smooth)
    torch.testing.assert_close(loss_sum("causal", logits, labels, False), nll)


def test_gradient_clipping_scales_a_known_gradient_to_the_norm():
    from peftlab.train.optim import clip_gradients, gradient_norm
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    norm = gradient_norm([p])
    assert float(norm) == 5.0
    clip_gradients([p], 1.0, norm)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0]))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    clip_gradients([p], None, norm)                      # null: no clipping
    torch.testing.assert_close(p.grad, torch.tensor([3.0, 4.0, 0.0]))


def test_a_run_with_a_tight_clip_ends_elsewhere_than_without(tmp_path):
    base = tiny_run_config(tmp_path, train={"eval_strategy": "no", "learning_rate": 1e-2})
    run({**base, "output_dir": str(tmp_path / "free"), "train": {**base["train"], "max_grad_norm": None}})
    run({**base, "output_dir": str(tmp_path / "tight"), "train": {**base["train"], "max_grad_norm": 1e-6}})
    free, tight = weights(tmp_path / "free"), weights(tmp_path / "tight")
    assert any(not torch.equal(free[k], tight[k]) for k in free)


def test_a_diverging_loss_is_reported_and_a_non_finite_weight_is_never_checkpointed(tmp_path):
    from peftlab.train.logs import read_jsonl
    config = tiny_run_config(tmp_path, method={"method": "full"},
                             train={"learning_rate": 50.0, "max_grad_norm": None, "eval_strategy": "no",
                                    "max_steps": 6, "epochs": 3})
    try:
        _, results = run(config)
        warned = results["warnings"]
    except PeftlabError as err:               # or it blew up to inf/NaN: then stopped, last good finite
        assert "stopped" in str(err)
        warned = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r.get("kind") == "warning"]
    assert warned, "a loss grown 100x its start must be reported"
    last = tmp_path / "run" / "checkpoints" / "last" / "trainable.safetensors"
    if last.exists():
        assert all(torch.isfinite(t).all() for t in load_file(str(last)).values())


def test_evaluations_during_training_and_at_the_end_have_their_own_generation_budget(tmp_path, monkeypatch):
    import peftlab.train.evaluations as loop
    budgets = []
    real = loop.evaluate

    def spy(model, tokenizer, kind, task, index, examples, max_length, budget, *rest):
        budgets.append(budget)
        return real(model, tokenizer, kind, task, index, examples, max_length, budget, *rest)
    monkeypatch.setattr(loop, "evaluate", spy)
    config = tiny_run_config(tmp_path, arch="t5", model={"eval_max_new_tokens": 3, "final_max_new_tokens": 7},
                             train={"max_steps": 2, "eval_steps": 2})
    run(config)
    assert budgets == [3, 7, 7]      # the evaluation at step 2, then the final validation and test


def test_an_eval_offset_evaluates_one_update_early(tmp_path):
    from peftlab.train.logs import read_jsonl
    config = tiny_run_config(tmp_path, train={"max_steps": 4, "eval_steps": 2, "eval_offset": 1})
    run(config)
    records = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [1, 3, 4]     # nlprunners' (step+1) % N


def test_pad_to_max_length_pads_every_row_and_the_last_step_can_go_unevaluated(tmp_path, monkeypatch):
    import peftlab.train.loop as loop
    from peftlab.train.logs import read_jsonl
    widths = []
    real = loop.collate

    def spy(*args, **kwargs):
        batch = real(*args, **kwargs)
        widths.append(batch["input_ids"].shape[1])
        return batch
    monkeypatch.setattr(loop, "collate", spy)
    config = tiny_run_config(tmp_path, data={"pad_to_max_length": True},
                             train={"max_steps": 3, "eval_steps": 2, "evaluate_last_step": False})
    run(config)
    assert widths and set(widths) == {24}                          # model.max_length in tiny_run_config
    records = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2]     # step 3 is not an eval step


def test_selection_by_validation_loss_keeps_the_lowest_and_generates_nothing_meanwhile(tmp_path, monkeypatch):
    from peftlab.train.logs import read_jsonl
    evaluated = []
    real = Trainer.evaluate_split
    monkeypatch.setattr(Trainer, "evaluate_split",
                        lambda self, split, final=False: evaluated.append(final) or real(self, split, final))
    config = tiny_run_config(tmp_path, arch="t5", train={"max_steps": 4, "eval_steps": 1, "select_metric": "loss",
                                                          "label_smoothing": 0.3})
    trainer, results = run(config)
    evals = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 4 and all("validation_loss" in r and r["average"] == -r["validation_loss"] for r in evals)
    best = min(evals, key=lambda r: r["validation_loss"])
    assert results["best_step"] == best["step"]
    assert evaluated and all(evaluated)          # generation only for the final validation and test
