"""benchmarks/quality.py's GPU mode (`--device cuda`) through its CPU smoke run: the CUDA path checks
(fast Walsh–Hadamard transform, bf16 training of Compacter and Intrinsic SAID), then every method on
three tasks in worker processes under bf16 autocast, SPoT / ATTEMPT after their sources; and the CPU
sweep (run_glue) that the other modes use."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark_smoke import BENCH, DATA, NEEDS_GLUE_AND_MINILM

pytestmark = NEEDS_GLUE_AND_MINILM


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        import cuda_checks
        import quality_runner
        import workers
        yield cuda_checks, quality_runner, workers
    finally:
        sys.path.remove(str(BENCH))


def _quality(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "quality.py", *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("quality_smoke")
    out = _quality("--smoke", "--work", str(folder / "work"), "--results-dir", str(folder / "results"),
                   "--data-dir", str(DATA))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = folder / "results"
    return (json.loads((results / "quality_smoke.json").read_text()),
            json.loads((results / "quality_smoke_checks.json").read_text()))


def test_every_method_runs_on_every_task_under_bf16_with_transfer_after_its_sources(smoke, bench_modules):
    payload, _ = smoke
    _, runner, _ = bench_modules
    meta, runs = payload["meta"], payload["glue_runs"]
    assert not meta["partial"] and meta["errors"] == [] and meta["precision"] == "bf16"
    expected = {(m, t) for m in [*runner.GLUE_METHODS, *runner.TRANSFER] for t in ("sst2", "stsb", "rte")}
    assert {(r["method"], r["task"]) for r in runs} == expected
    assert meta["runs_done"] == meta["planned_runs"] == len(expected)
    assert all(r["precision"] == "bf16" and r["device"] == "cpu" for r in runs)
    assert all(math.isfinite(r["score"]) and r["steps"] == 2 for r in runs)
    # SPoT / ATTEMPT load the prompt-tuning adapters saved by the other tasks' runs (a missing source is
    # an error record, and there are none): they ran in the second phase, after those were written
    sources = Path(meta["model"]).parent        # the tiny model is made in the mode's work folder
    assert sources.name == "smoke"
    for task in ("sst2", "stsb", "rte"):
        assert (sources / runner.slug(runner.SOURCE_METHOD) / task / "42" / "adapter" / "default").is_dir()


def test_the_cuda_path_checks_run_and_pass_on_the_cpu(smoke):
    _, checks = smoke
    assert checks["ok"] and checks["device"] == "cpu"
    fwht = [r for r in checks["rows"] if r["check"].startswith("fwht")]
    assert {r["length"] for r in fwht} == {2, 32, 1024, 2 ** 15, 2 ** 16, 2 ** 20}
    assert {r["dtype"] for r in fwht} == {"float32", "bfloat16"}
    assert all(r["error"] <= r["tolerance"] for r in fwht)
    training = {r["check"]: r for r in checks["rows"] if r["check"].startswith("bf16")}
    assert set(training) == {"bf16 training: Compacter (n=4)", "bf16 training: Intrinsic-SAID"}
    for row in training.values():
        assert math.isfinite(row["loss_bf16"]) and abs(row["loss_bf16"] - row["loss_fp32"]) <= 0.1


def test_a_wrong_transform_fails_the_fwht_check(bench_modules, monkeypatch):
    import peftlab.ops
    cuda_checks, _, _ = bench_modules
    real = peftlab.ops.fwht

    def off_by_a_little(x):     # right in float64 (the reference), 1e-3 off otherwise
        return real(x) if x.dtype == __import__("torch").float64 else real(x) * 1.001
    monkeypatch.setattr(peftlab.ops, "fwht", off_by_a_little)
    rows = cuda_checks.fwht_checks("cpu")
    float32 = [r for r in rows if r["dtype"] == "float32"]
    assert float32 and not any(r["ok"] for r in float32)


def test_no_chunk_starts_after_the_deadline(bench_modules, tmp_path, capsys):
    _, _, workers = bench_modules
    started = []

    def launch(chunk, jobs_file, out_file):
        started.append(chunk)
        return [sys.executable, "-c", "pass"], None
    records, walls = workers.run_pool([[{"task": "sst2", "label": "x"}]] * 3, tmp_path, launch, slots=2,
                                      deadline=time.time() - 1)
    assert started == [] and records == [] and walls == []
    assert "3 runs in 3 chunks not started" in capsys.readouterr().err


def test_device_cuda_without_a_gpu_is_refused_in_one_line(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = _quality("--device", "cuda", "--work", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r"),
                   timeout=120)
    assert out.returncode != 0 and out.stderr.strip() == "--device cuda: torch sees no CUDA device here"
    assert not (tmp_path / "r").exists()
    out = _quality("--device", "cuda", "--mode", "quick", timeout=120)
    assert out.returncode == 2 and "runs the parallel modes" in out.stderr


def test_the_cpu_sweep_runs_a_method_on_minilm(bench_modules, tmp_path):
    """run_glue, the quick / medium / full modes' loop (it once broke when load_splits grew an argument)."""
    _, runner, _ = bench_modules
    budget = runner.Budget(train=16, steps=1, test=8, batch_size=8)
    records = runner.run_glue({"sst2": budget}, {}, ["LoRA (r=8)"], (42,), str(DATA), tmp_path, threads=1)
    (record,) = records
    assert record["method"] == "LoRA (r=8)" and record["steps"] == 1 and 0 <= record["score"] <= 100
    assert record["precision"] == "fp32" and math.isfinite(record["final_loss"])
