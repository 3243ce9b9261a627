"""Worker processes for the sweeps of quality.py and quality_peers.py: chunks of runs, each chunk a fresh
process that reads its jobs from <work>/chunkNNN.json and writes one JSON line per finished run to
<work>/chunkNNN.jsonl, `slots` processes at a time. A crash costs one chunk; results come in as chunks end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker_env(threads: int, pythonpath: str) -> dict:
    """A worker's environment: `threads` threads for torch's CPU libraries, no hub access, PYTHONPATH as
    given (a worker in another environment must not inherit the caller's)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": pythonpath}


def run_pool(chunks: list, work: Path, launch, slots: int, on_chunk=None, deadline: float | None = None
             ) -> tuple[list, list]:
    """Runs `chunks` (in order) on `slots` processes; `launch(chunk, jobs_file, out_file) -> (argv, env)`.
    No chunk starts after `deadline` (time.time()); the ones not started are reported. Returns (records,
    walls: one {"runs", "wall_s", "run_s"} per chunk, for startup estimates)."""
    pending, running, records, walls = list(enumerate(chunks)), [], [], []
    while pending or running:
        while pending and len(running) < slots and (deadline is None or time.time() < deadline):
            index, chunk = pending.pop(0)
            running.append(_start(chunk, index, work, launch))
        if deadline is not None and time.time() >= deadline and pending:
            print(f"deadline reached: {sum(map(len, (c for _, c in pending)))} runs in {len(pending)} chunks "
                  "not started", file=sys.stderr)
            pending = []
        time.sleep(0.5)
        for item in [r for r in running if r[0].poll() is not None]:
            running.remove(item)
            got, wall = _finish(*item)
            records += got
            walls.append(wall)
            if on_chunk:
                on_chunk(records)
    return records, walls


def _start(chunk: list, index: int, work: Path, launch) -> tuple:
    jobs_file, out_file = work / f"chunk{index:03d}.json", work / f"chunk{index:03d}.jsonl"
    jobs_file.write_text(json.dumps(chunk))
    out_file.unlink(missing_ok=True)
    argv, env = launch(chunk, jobs_file, out_file)
    log = open(work / f"chunk{index:03d}.log", "w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(Path(__file__).parent))
    return process, out_file, log, time.perf_counter(), chunk


def _finish(process, out_file: Path, log, started: float, chunk: list) -> tuple[list, dict]:
    log.close()
    got = [json.loads(line) for line in out_file.read_text().splitlines()] if out_file.exists() else []
    if process.returncode != 0 or len(got) < len(chunk):
        first = chunk[0]
        print(f"worker for {first.get('library', '')} {first.get('method', first.get('label'))} {first['task']} "
              f"exited {process.returncode} after {len(got)}/{len(chunk)} runs; see {Path(log.name).name}",
              file=sys.stderr)
    return got, {"runs": len(got), "wall_s": time.perf_counter() - started,
                 "run_s": sum(r.get("run_s", 0.0) for r in got)}
