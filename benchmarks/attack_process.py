"""Attacks 4-6 on whole `peftlab train` processes: kills and interrupts (SIGKILL / SIGINT at random
moments, and the PEFTLAB_KILL_AT hook in a step, an evaluation and a checkpoint write) followed by
`--resume`, which must end bit for bit where an uninterrupted run ends; disk full (a file size limit,
SIGXFSZ ignored, so writes fail with EFBIG) during training, checkpointing and pl.save; and two runs
started together into one output_dir, of which one must be refused naming the other's pid."""
from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path

from attack_common import error_lines, isolated, record
from attack_fixtures import base_run_config, config_for, copy_run
from attack_launch import Launched, consistent, train_records
from attack_process_disk import disk_case, disk_cases

LONG = {"steps": 12, "eval_every": 4}      # 2 epochs of 6 batches: long enough to be hit
KILL_KINDS = ["sigkill_random", "sigint_random", "hook_step", "hook_eval", "hook_ckpt", "sigkill_early"]
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PEFTLAB_KILL_AT": ""}


def long_config(shared: dict, run: Path, folder: Path) -> Path:
    """The run the process attacks use: LONG, or (quick) the attack's 2-step base run."""
    if shared["process"]["steps"] == LONG["steps"]:
        config = base_run_config(shared, "bert", run, epochs=2, max_steps=None, batch_size=4,
                                 eval_steps=LONG["eval_every"])
    else:
        config = base_run_config(shared, "bert", run)
    path = folder / f"{run.name}.json"
    path.write_text(json.dumps(config))
    return path


def setup(shared: dict, quick: bool) -> None:
    """The uninterrupted reference run (quick: the base run, 2 steps evaluated at 2, is the reference)."""
    work = Path(shared["work"]) / "process"
    work.mkdir(parents=True, exist_ok=True)
    if quick:
        shared["process"] = {"steps": 2, "eval_every": 2, "reference": shared["finished_run"]}
        return
    shared["process"] = dict(LONG)
    reference = work / "reference"
    config = long_config(shared, reference, work)
    result = isolated(_main, ["train", str(config)], timeout=300)
    if result["status"] != "returned" or result["value"] != 0:
        raise RuntimeError(f"the process attacks' reference run failed: {result}")
    shared["process"]["reference"] = str(reference)


def _main(argv):
    from peftlab.cli import main
    return main(argv)


# --- kills and interrupts -------------------------------------------------------------------------------

def kill_plan(count: int, per_run: int, seed: int, steps: int) -> list[list[dict]]:
    rng = random.Random(seed)
    kinds = KILL_KINDS if steps > 2 else ["hook_step"]     # a 2-step run is too short to hit at random
    runs, kinds = [], [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(kinds)
    for start in range(0, count, per_run):
        chosen = kinds[start: start + per_run]
        points = sorted(rng.sample(range(1, steps), len(chosen)))
        runs.append([{"kind": kind, "at": point} for kind, point in zip(chosen, points)])
    return runs


def kill_run(number: int, plan: list[dict], shared: dict, fork: bool, timeout: float) -> list[dict]:
    work = Path(shared["work"]) / "process" / f"kills-{number}"
    work.mkdir(parents=True)
    run = work / "run"
    config = long_config(shared, run, work)
    outcomes = []
    for kill in plan:
        outcomes.append(_one_kill(kill, run, config, work, fork, timeout, shared["process"]))
    final = Launched(_argv(config, run), work, ENV, work, fork)
    code = final.wait(timeout)
    problem = None
    if code != 0:
        problem = f"the run after the kills exited {code}: {' '.join(error_lines(final.stderr))[:300]}"
    else:
        problem = consistent(run, Path(shared["process"]["reference"]), shared["process"]["steps"])
    results = []
    for index, (kill, (kind, message)) in enumerate(zip(plan, outcomes)):
        verdict = (kind, message) if kind != "ok" else ("lost_data", f"after resuming: {problem}") if problem \
            else ("ok", "resumed: bitwise equal to the uninterrupted run")
        outcome = f"{message}; resumed to the end, exit {code}"
        results.append(record("kills and interrupts", number * 100 + index, {"run": number, **kill}, verdict,
                              outcome=outcome))
    if all(r["class"] == "ok" for r in results):
        shutil.rmtree(work, ignore_errors=True)
    return results


def _argv(config: Path, run: Path) -> list[str]:
    """How a user goes on after a kill: --resume if a checkpoint was written, else start over."""
    has_checkpoint = (run / "checkpoints" / "last").exists() or (run / "checkpoints" / "last.old").exists()
    return ["train", str(config), "--resume"] if has_checkpoint else ["train", str(config), "overwrite=true"]


def _one_kill(kill: dict, run: Path, config: Path, work: Path, fork: bool, timeout: float,
              plan: dict) -> tuple[str, str]:
    kind, at = kill["kind"], kill["at"]
    evaluated = min(plan["steps"], (at // plan["eval_every"] + 1) * plan["eval_every"])   # the next evaluation
    hook = {"hook_step": f"step:{at}", "hook_eval": f"eval:{evaluated}", "hook_ckpt": f"ckpt:{evaluated}"}
    for _ in range(3):     # a kill that came too late (the run had finished) is tried again on a new run
        proc = Launched(_argv(config, run), work, {**ENV, "PEFTLAB_KILL_AT": hook.get(kind, "")}, work, fork)
        if kind in hook:
            code = proc.wait(timeout)
        else:
            code = _signal_later(proc, kind, at, run, timeout)
        if code == 0:       # start over (overwrite=true, see _argv), so that the kill lands in a run
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            continue
        return _kill_verdict(kind, code, proc.stderr)
    return "ok", "the run always finished before the kill; nothing to recover"


def _signal_later(proc: Launched, kind: str, at: int, run: Path, timeout: float) -> int | None:
    sig = signal.SIGINT if kind.startswith("sigint") else signal.SIGKILL
    deadline = time.monotonic() + timeout
    if kind == "sigkill_early":
        time.sleep(random.Random(at).uniform(0.2, 2.5))
    else:
        while proc.poll() is None and time.monotonic() < deadline:
            logged = [r["step"] for r in train_records(run)]
            if logged and logged[-1] >= at:
                break
            time.sleep(0.005)
    if proc.poll() is not None:
        return proc.returncode
    proc.signal(sig)
    return proc.wait(timeout)


def _kill_verdict(kind: str, code: int | None, stderr: str) -> tuple[str, str]:
    if code is None:
        return "hang", "the process did not stop after the signal"
    if "Traceback" in stderr:
        return "raw_traceback", stderr.strip().splitlines()[-1][:300]
    if kind.startswith("sigint"):
        if code in (130, -signal.SIGINT):
            return "ok", "interrupted (exit 130)"
        lines = error_lines(stderr)
        return ("ok", f"exit {code}: {lines[-1][:200] if lines else ''}") if code == 2 and len(lines) == 1 else \
            ("raw_traceback", f"exit {code} on SIGINT: {stderr.strip()[-300:]}")
    return ("ok", f"killed (exit {code})") if code == -signal.SIGKILL else ("raw_traceback", f"exit {code}")


# --- concurrent runs ------------------------------------------------------------------------------------

CONCURRENT = ["fresh", "fresh", "overwrite", "overwrite", "resume"]


def concurrent_case(number: int, variant: str, shared: dict, fork: bool, timeout: float) -> dict:
    work = Path(shared["work"]) / "process" / f"concurrent-{number}"
    work.mkdir(parents=True)
    run = work / "run"
    config = long_config(shared, run, work)
    extra = {"fresh": [], "overwrite": ["overwrite=true"], "resume": ["train.max_steps=3", "--resume"]}[variant]
    reference = Path(shared["process"]["reference"])
    if variant == "resume":      # two resumes of one finished 2-step run, each to step 3
        copy_run(shared["finished_run"], run)
        config = config_for(shared, run, work)
        reference = Path(shared["reference_run"])
    procs = [Launched(["train", str(config), *extra], work, ENV, work, fork) for _ in range(2)]
    codes = [p.wait(timeout) for p in procs]
    verdict = _concurrent_verdict(codes, [p.stderr for p in procs], run, reference,
                                  3 if variant == "resume" else shared["process"]["steps"])
    if verdict[0] in ("ok", "refused"):
        shutil.rmtree(work, ignore_errors=True)
    return record("concurrent runs", number, {"variant": variant}, verdict, outcome=f"exit codes {codes}")


def _concurrent_verdict(codes: list, stderrs: list[str], run: Path, reference: Path, steps: int) -> tuple[str, str]:
    if None in codes:
        return "hang", "a run did not finish"
    if any("Traceback" in s for s in stderrs) or any(c not in (0, 2) for c in codes):
        return "raw_traceback", next(s for s, c in zip(stderrs, codes) if "Traceback" in s or c not in (0, 2))[-300:]
    if 0 not in codes:
        return "valid_refused", " / ".join(error_lines(stderrs[0])[:1])
    problem = consistent(run, reference, steps)
    if problem:
        return "lost_data", f"the folder is inconsistent: {problem}"
    refused = [error_lines(s) for s, c in zip(stderrs, codes) if c == 2]
    if any(len(lines) != 1 for lines in refused):
        return "raw_traceback", "not exactly one error line"
    if refused:
        return "refused", refused[0][0][:300]
    return "ok", "the two runs did not overlap; one replaced the other"


__all__ = ["kill_plan", "kill_run", "concurrent_case", "CONCURRENT", "disk_cases", "disk_case", "setup"]
