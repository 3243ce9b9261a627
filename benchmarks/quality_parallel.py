"""quality.py's runs on worker processes: the GPU mode (`--device cuda`), where several processes share
one GPU — MiniLM's steps are launch-bound, so one process leaves the GPU mostly idle — and its CPU smoke
run (`--smoke`), which goes through the same plan, workers and runs on a tiny model.

Two phases: every table method on every task and seed (the source method saves its adapters), then
SPoT and ATTEMPT, which read those adapters. A chunk is one method on one task for all seeds (an E2E
method is a chunk of its own); chunks go longest-first (steps x seeds) to the slots.

    worker:  python quality_parallel.py --jobs chunk.json --out chunk.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from workers import run_pool, worker_env

HERE = Path(__file__).parent
STARTUP_S = 15.0    # a worker's start (imports, CUDA context): only orders the chunks


def glue_jobs(tasks: dict, methods: list, seeds, sources: bool, settings: dict, by: str = "method"
              ) -> tuple[list, list]:
    """(phase 1 chunks, phase 2 chunks); `settings`: data_dir, work, threads, model, precision, train_rows.
    A chunk is one method on one task (`by="method"`), or one task (`by="task"`: runs of seconds, where a
    worker's start is the cost: the smoke run)."""
    from quality_runner import SOURCE_METHOD, TRANSFER
    table = [m for m in methods if m not in TRANSFER]
    if sources and SOURCE_METHOD not in table:
        table.append(SOURCE_METHOD)
    transfer = [m for m in TRANSFER if sources and m in methods]

    def chunk(label, task):
        return [dict(settings, label=label, task=task, seed=seed, budget=asdict(tasks[task]),
                     sources=list(tasks) if sources else [], table=label in methods) for seed in seeds]
    def phase(labels):
        chunks = [chunk(label, task) for task in tasks for label in labels]
        if by == "task":
            chunks = [sum((c for c in chunks if c[0]["task"] == task), []) for task in tasks]
        return [c for c in chunks if c]
    return phase(table), phase(transfer)


def e2e_jobs(budget, settings: dict) -> list[list[dict]]:
    from quality_runner import E2E_METHODS
    return [[dict(settings, label=label, task="e2e", seed=42, budget=asdict(budget))] for label in E2E_METHODS]


def steps_of(job: dict) -> int:
    """Optimizer steps of a job from its budget and the task's training rows (for ordering only)."""
    budget = job["budget"]
    if budget["steps"]:
        return budget["steps"]
    rows = budget["train"] or job.get("train_rows", {}).get(job["task"], 10_000)
    return math.ceil(budget["epochs"] * math.ceil(rows / budget["batch_size"]))


def run_phases(phases: list, work: Path, slots: int, threads: int, deadline: float | None = None,
               on_record=None) -> list:
    """Each phase's chunks longest-first on `slots` workers; a phase starts when the one before ends."""
    from quality_peers_sched import schedule
    records: list = []
    for phase in phases:
        _, ordered = schedule(phase, lambda c: sum(map(steps_of, c)), slots, STARTUP_S)
        done = list(records)
        got, _ = run_pool(ordered, work, _launch(threads), slots, deadline=deadline,
                          on_chunk=lambda new: on_record(done + new) if on_record else None)
        records = done + got
    return records


def _launch(threads: int):
    # the workers run in this environment: the caller's PYTHONPATH (a GPU machine's src/) carries over
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))

    def launch(chunk, jobs_file: Path, out_file: Path):
        return [sys.executable, str(HERE / "quality_parallel.py"), "--jobs", str(jobs_file), "--out",
                str(out_file)], worker_env(threads, pythonpath)
    return launch


def run_job(job: dict) -> dict:
    import quality_runner as runner
    budget = runner.Budget(**job["budget"])
    common = dict(data_dir=job["data_dir"], work=Path(job["work"]), threads=job["threads"],
                  model=job["model"], precision=job["precision"])
    runner.TRAIN_POOLER = job.get("train_pooler", False)
    if job["task"] == "e2e":
        record = runner.run_e2e_method(job["label"], budget, **common)
    else:
        record = runner.run_labelled(job["label"], job["task"], job["seed"], budget,
                                     source_tasks=job["sources"], table=job["table"], **common)
    return dict(record, device=job["device"])


def worker_main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="one chunk of quality.py's parallel runs")
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    for job in json.loads(Path(args.jobs).read_text()):
        try:
            record = run_job(job)
        except Exception as err:   # noqa: BLE001 (a failed run is recorded, the chunk goes on)
            traceback.print_exc()
            record = {"method": job["label"], "task": job["task"], "seed": job["seed"],
                      "error": f"{type(err).__name__}: {err}"[:500]}
        with open(args.out, "a") as out:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    worker_main()
