"""Kill and resume: a training subprocess SIGKILLed during a step, during evaluation and during a
checkpoint write, resumed each time with --resume, ends bitwise equal to an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from test_train_support import tiny_run_config

STEPS, EVAL_EVERY = 12, 4         # 2 epochs of 6 batches; evaluated (and checkpointed) at 4, 8, 12


def _train(config_path: Path, run_dir: Path, kill_at: str | None = None, resume: bool = False):
    args = [sys.executable, "-m", "peftlab.cli", "train", str(config_path), f"output_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PEFTLAB_KILL_AT": kill_at or ""}
    env.pop("PEFTLAB_KILL_AT_STEP", None)
    return subprocess.run(args + (["--resume"] if resume else []), capture_output=True, text=True,
                          timeout=240, env=env)


def _last(run_dir: Path) -> dict:
    last = run_dir / "checkpoints" / "last"
    torch.load(last / "optimizer.pt", weights_only=True)                    # loadable, pickle-free
    load_file(str(last / "trainable.safetensors"))
    return json.loads((last / "trainer_state.json").read_text())


def _kill_plan(seed: int) -> list[tuple[str, int, int]]:
    """(fault point, step it fires at, step of the `last` checkpoint it must leave), in run order.
    The points are drawn at random (seeded, so a failure replays) from where each phase can happen."""
    rng = random.Random(seed)
    step = rng.randint(EVAL_EVERY + 1, 2 * EVAL_EVERY - 1)       # mid-step, between two checkpoints
    return [(f"step:{step}", step, EVAL_EVERY),
            (f"eval:{2 * EVAL_EVERY}", 2 * EVAL_EVERY, EVAL_EVERY),   # evaluated and logged, not saved
            (f"ckpt:{STEPS}", STEPS, 2 * EVAL_EVERY)]                 # new `last` written, not renamed


def test_killed_in_a_step_in_evaluation_and_in_a_checkpoint_write_resumes_to_the_same_run(tmp_path):
    config = tiny_run_config(tmp_path, train={"epochs": 2, "batch_size": 4, "eval_steps": EVAL_EVERY})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    whole = _train(path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    for number, (point, _, kept_step) in enumerate(_kill_plan(seed=2026)):
        killed = _train(path, cut, kill_at=point, resume=number > 0)
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        assert _last(cut)["step"] == kept_step, point                 # the previous `last` survives whole
    assert (cut / "checkpoints" / "last.tmp").exists()                # the write the kill cut short
    resumed = _train(path, cut, resume=True)
    assert resumed.returncode == 0, resumed.stderr

    a, b = (load_file(str(d / "checkpoints" / w / "trainable.safetensors"))
            for d in (tmp_path / "whole", cut) for w in ("last",))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)      # bitwise
    best_a, best_b = (load_file(str(d / "checkpoints" / "best" / "trainable.safetensors"))
                      for d in (tmp_path / "whole", cut))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "whole", cut))
    assert ra["tasks"] == rb["tasks"] and ra["best_step"] == rb["best_step"]
    assert ra["train"]["final_loss"] == rb["train"]["final_loss"]
    records = [json.loads(line) for line in (cut / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8, 12]        # none twice
    whole_log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rs]  # noqa: E731
    assert strip(records) == strip(whole_log)                          # same losses and metrics
    assert not (cut / "checkpoints" / "last.tmp").exists()


def test_kill_plan_covers_every_phase_at_reachable_steps():
    for seed in range(20):
        plan = _kill_plan(seed)
        assert [p.split(":")[0] for p, _, _ in plan] == ["step", "eval", "ckpt"]
        assert all(kept < fires <= STEPS for _, fires, kept in plan)
