"""The checks `quality.py --device cuda` runs before its sweep, on the paths nothing else runs on a GPU:

- the fast Walsh–Hadamard transform (Intrinsic SAID's Fastfood projection) on the device against the
  CPU transform in float64, at lengths on both sides of the optional CUDA kernel's 2^15 axis limit, its
  gradient (H is its own transpose), and bf16 input within bf16's precision;
- bf16 training of Compacter and Intrinsic SAID through the runner (bf16 autocast, float32 weights and
  optimizer state) against the same run in float32: finite losses, the final losses close, and, on the
  real model, both learning (final loss below chance, ln 2).

With `--smoke` (CI, CPU) the same checks run on the CPU: the transform against float64, and bf16 CPU
autocast on the tiny model, where a few steps cannot show learning, so that criterion is skipped.
Writes <results>/<name>.md and .json.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

FWHT_BITS = (1, 5, 10, 15, 16, 20)      # 16 and 20: past the CUDA kernel's 2^15, the mixed path
FWHT_ROWS = 4
FWHT_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}    # max |error| / max |reference|
LOSS_GAP = 0.1                           # |final loss bf16 − fp32|
CHANCE = math.log(2)                     # SST-2's loss at chance
TRAIN_CHECKS = {"Compacter (n=4)": "compacter", "Intrinsic-SAID": "intrinsic_said"}


def fwht_checks(device: str) -> list[dict]:
    from peftlab.ops import fwht
    from peftlab.ops.fwht import cuda_kernel_available
    kernel = device == "cuda" and cuda_kernel_available()
    g = torch.Generator().manual_seed(0)
    rows = []
    for bits in FWHT_BITS:
        x = torch.randn(FWHT_ROWS, 2 ** bits, generator=g)
        reference = fwht(x.double())
        for dtype in (torch.float32, torch.bfloat16):
            got = fwht(x.to(device=device, dtype=dtype)).double().cpu()
            rows.append(_row("transform", bits, dtype, device, kernel, got, reference))
        leaf = x.to(device).requires_grad_()
        upstream = torch.randn(FWHT_ROWS, 2 ** bits, generator=g)
        fwht(leaf).backward(upstream.to(device))
        rows.append(_row("gradient", bits, torch.float32, device, kernel, leaf.grad.double().cpu(),
                         fwht(upstream.double())))
    return rows


def _row(what, bits, dtype, device, kernel, got, reference) -> dict:
    name = str(dtype).removeprefix("torch.")
    error = float((got - reference).abs().max() / reference.abs().max())
    return {"check": f"fwht {what}", "length": 2 ** bits, "dtype": name, "device": device,
            "cuda_kernel": kernel, "error": error,
            "tolerance": FWHT_TOLERANCE[name], "ok": error <= FWHT_TOLERANCE[name]}


def training_checks(device: str, model: str, data_dir: str, work: Path, budget, learn: bool) -> list[dict]:
    """Each of TRAIN_CHECKS trained twice from the same seed, fp32 and bf16, on SST-2 through the runner."""
    from quality_runner import GLUE_METHODS, run_one
    rows = []
    for label in TRAIN_CHECKS:
        method, lr = GLUE_METHODS[label]
        runs = {p: run_one("sst2", method, lr, 42, work / f"{TRAIN_CHECKS[label]}-{p}", budget, data_dir, 1,
                           model=model, precision=p) for p in ("fp32", "bf16")}
        losses = {p: r["final_loss"] for p, r in runs.items()}
        finite = all(v is not None and math.isfinite(v) for v in losses.values())
        close = finite and abs(losses["bf16"] - losses["fp32"]) <= LOSS_GAP
        learned = finite and all(v < CHANCE for v in losses.values())
        rows.append({"check": f"bf16 training: {label}", "device": device, "steps": runs["bf16"]["steps"],
                     "loss_fp32": losses["fp32"], "loss_bf16": losses["bf16"],
                     "accuracy_fp32": 100 * runs["fp32"]["test"]["accuracy"],
                     "accuracy_bf16": 100 * runs["bf16"]["test"]["accuracy"],
                     "s_per_step_fp32": runs["fp32"]["train_s"] / max(runs["fp32"]["steps"], 1),
                     "s_per_step_bf16": runs["bf16"]["train_s"] / max(runs["bf16"]["steps"], 1),
                     "learning_checked": learn, "ok": bool(close and (learned or not learn))})
    return rows


def run_checks(device: str, model: str, data_dir: str, work: Path, budget, learn: bool) -> dict:
    started = time.perf_counter()
    rows = fwht_checks(device) + training_checks(device, model, data_dir, work, budget, learn)
    where = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    return {"device": device, "where": where, "torch": torch.__version__, "rows": rows,
            "ok": all(r["ok"] for r in rows), "wall_s": time.perf_counter() - started}


def write(results: Path, name: str, payload: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (results / f"{name}.md").write_text(to_markdown(payload))


def to_markdown(payload: dict) -> str:
    verdict = "all passed" if payload["ok"] else "SOME FAILED"
    lines = [f"# CUDA path checks on {payload['where']} ({payload['device']}): {verdict}", "",
             f"torch {payload['torch']}; {payload['wall_s']:.0f} s. Written by benchmarks/cuda_checks.py "
             "(run by quality.py --device cuda, and by --smoke on the CPU).", "",
             "## Fast Walsh–Hadamard transform against the CPU transform in float64", "",
             "| check | length | dtype | CUDA kernel | max error / max value | tolerance | ok |",
             "|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if r["check"].startswith("fwht"):
            lines.append(f"| {r['check']} | {r['length']:,} | {r['dtype']} | {'yes' if r['cuda_kernel'] else 'no'} "
                         f"| {r['error']:.2e} | {r['tolerance']:g} | {'yes' if r['ok'] else '**no**'} |")
    lines += ["", f"## bf16 training against float32 (same seed; final losses within {LOSS_GAP}"
              f"{'' if payload['device'] == 'cpu' else ', both below ln 2'})", "",
              "| method | steps | loss fp32 | loss bf16 | accuracy fp32 | accuracy bf16 | s/step fp32 | s/step bf16 | ok |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if r["check"].startswith("bf16"):
            lines.append(f"| {r['check'].split(': ', 1)[1]} | {r['steps']} | {r['loss_fp32']:.3f} | "
                         f"{r['loss_bf16']:.3f} | {r['accuracy_fp32']:.1f} | {r['accuracy_bf16']:.1f} | "
                         f"{r['s_per_step_fp32']:.3f} | {r['s_per_step_bf16']:.3f} | {'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines) + "\n"
