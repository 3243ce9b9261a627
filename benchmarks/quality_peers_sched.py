"""Jobs, worker processes and the run-time estimate of benchmarks/quality_peers.py.

A chunk is the runs of one method on one task for every seed and library of one environment (peftlab and
HF PEFT share .venv; AdapterHub has benchmarks/.venv-adapters), or, where runs are seconds long (smoke,
calibration), of one task. Chunks go longest-first to `slots` worker processes of one torch thread each
(the two cores of this machine), each a fresh process, so a crash costs one chunk and the results come in
as chunks finish. A worker's start (imports) costs 6-15 s here: that is what the grouping trades.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from workers import run_pool, worker_env

HERE = Path(__file__).parent
MAIN_WORKER = HERE / "quality_peers_worker.py"
ADAPTERHUB_WORKER = HERE / "peers" / "adapterhub_quality_worker.py"
ADAPTERHUB_VENV = HERE / ".venv-adapters"
STARTUP_S = 8.0      # a worker's imports when no calibration measured them (torch + transformers, loaded CPU)
CALIBRATION_EVAL_ROWS = 128   # calibration tests on this many rows and scales the time to the test split


def adapterhub_python(create: bool) -> str | None:
    """AdapterHub's interpreter; created by peers/setup_adapterhub.sh when `create` (as speed.py does).
    None when it is absent and cannot be made (CI, a machine without network)."""
    python = ADAPTERHUB_VENV / "bin" / "python"
    if python.exists() and any(ADAPTERHUB_VENV.glob(".ready-*")):
        return str(python)
    if not create:
        return None
    try:
        out = subprocess.run(["bash", str(HERE / "peers" / "setup_adapterhub.sh")], check=True,
                             capture_output=True, text=True, timeout=1800)
    except (subprocess.SubprocessError, OSError):
        return None
    return f"{out.stdout.strip().splitlines()[-1]}/bin/python"


def environment_of(library: str) -> str:
    return "adapterhub" if library == "AdapterHub" else "main"


def make_jobs(table_for_task, tasks: dict, seeds, libraries, labels, device: str, calibrate: bool,
              tokenizer_path: str, only: dict | None = None) -> list[dict]:
    """Every (task key, method, library, seed) the libraries have; `table_for_task(key) -> {label: Method}`;
    `only[key] = {"libraries": [...], "methods": [...]}` restricts a key (a second budget)."""
    jobs = []
    for task in tasks:
        table = table_for_task(task)
        keep = (only or {}).get(task, {})
        for label in labels:
            method = table[label]
            if label not in keep.get("methods", [label]):
                continue
            for library in libraries:
                if library not in method.configs or library not in keep.get("libraries", [library]):
                    continue
                for seed in seeds:
                    jobs.append({"task": task, "method": label, "library": library, "seed": seed,
                                 "lr": method.lr, "config": method.configs[library], "calibrate": calibrate,
                                 "bf16": device.startswith("cuda") and method.bf16,
                                 "tokenizer_path": tokenizer_path,
                                 **({"eval_limit": CALIBRATION_EVAL_ROWS} if calibrate else {})})
    return jobs


def chunks_of(jobs: list[dict], by: str = "method") -> list[list[dict]]:
    """Chunks of one environment and task and method ("method"), environment and task ("task"), or
    environment ("environment": runs of seconds, where a worker's start is the cost)."""
    groups: dict = {}
    for job in jobs:
        key = (environment_of(job["library"]),) + {"method": (job["task"], job["method"]), "task": (job["task"],),
                                                   "environment": ()}[by]
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def estimate_run(job: dict, calibration: dict | None, steps: dict, glue_task: dict) -> float:
    """Seconds for one run from the calibration's per-step time, eval time and setup time (a second
    budget's key falls back to its GLUE task's calibration: the same rows per step)."""
    if not calibration:
        return float(steps[job["task"]])
    runs = calibration["runs"]
    measured = runs.get(f"{job['library']}|{job['method']}|{job['task']}") or \
        runs.get(f"{job['library']}|{job['method']}|{glue_task[job['task']]}")
    if measured is None:
        return float(steps[job["task"]]) * calibration["median_s_per_step"]
    return steps[job["task"]] * measured["s_per_step"] + measured["eval_s"] + measured["setup_s"]


def schedule(chunks: list, cost, slots: int, startup_s: float) -> tuple[float, list]:
    """Longest-first greedy over `slots`: (the makespan in seconds, the chunks in start order)."""
    ordered = sorted(chunks, key=cost, reverse=True)
    loads = [0.0] * slots
    for chunk in ordered:
        loads[loads.index(min(loads))] += startup_s + cost(chunk)
    return max(loads), ordered


def _launcher(data_file: Path, pythons: dict, threads: int, device: str):
    def launch(chunk: list, jobs_file: Path, out_file: Path) -> tuple[list, dict]:
        env_name = environment_of(chunk[0]["library"])
        script = MAIN_WORKER if env_name == "main" else ADAPTERHUB_WORKER
        return [pythons[env_name], str(script), "--jobs", str(jobs_file), "--data", str(data_file),
                "--out", str(out_file), "--threads", str(threads), "--device", device], \
            worker_env(threads, str(HERE))
    return launch


def run_chunks(chunks: list, work: Path, data_file: Path, pythons: dict, slots: int, threads: int,
               device: str, on_chunk=None) -> tuple[list, list]:
    """Runs the chunks (in the given order) on `slots` worker processes; returns (records, process
    walls: one {"runs", "wall_s", "run_s"} per chunk, for the startup estimate)."""
    return run_pool(chunks, work, _launcher(data_file, pythons, threads, device), slots, on_chunk)


def calibration_summary(records: list, walls: list, test_rows: dict) -> dict:
    """Per library|method|task: s/step (after the first step; wall, and CPU: the work without waiting
    for a core), eval seconds (scaled to the whole test split) and setup seconds; and the mean worker
    startup (process wall minus its runs' time)."""
    runs = {}
    for r in records:
        if "error" in r:
            continue
        setup = r["run_s"] - r["train_s"] - r["eval_s"]
        runs[f"{r['library']}|{r['method']}|{r['task']}"] = {
            "s_per_step": r["s_per_step_after_first"], "cpu_s_per_step": r["cpu_s_per_step"],
            "eval_s": r["eval_s"] * test_rows[r["task"]] / r["eval_rows"], "setup_s": max(0.0, setup)}
    per_step = sorted(v["s_per_step"] for v in runs.values()) or [1.0]
    startups = [w["wall_s"] - w["run_s"] for w in walls if w["runs"]]
    return {"runs": runs, "median_s_per_step": per_step[len(per_step) // 2],
            "startup_s": sum(startups) / len(startups) if startups else STARTUP_S}

