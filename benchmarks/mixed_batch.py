"""Mixed-adapter batch throughput: 4 adapters routed per row (`adapter_names=[...]`) vs one adapter, at
the same batch size (goal: mixed >= 0.9x single). Inference (no grad), timed in interleaved blocks so
the shared machine's drift hits every variant alike; ratios come from this one run.

    .venv/bin/python benchmarks/mixed_batch.py --preset all-minilm-l6-v2 --batch 32 --seq 64
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peftlab as pl  # noqa: E402
from common import batch_for, build  # noqa: E402

NAMES = ["a0", "a1", "a2", "a3"]
METHODS = {
    "lora": lambda: pl.LoRA(r=8, slots=("attn.q", "attn.v")),
    "houlsby": lambda: pl.Houlsby(reduction_factor=16),
}


def setup(preset: str, method: str, batch_size: int, seq: int):
    model = build(preset).eval()
    for name in NAMES:
        pl.attach(model, METHODS[method](), name)
        with torch.no_grad():
            for p in pl.core.attachment_parameters(model, name):
                p.add_(0.01 * torch.randn_like(p))
    batch = {k: v for k, v in batch_for(model, batch_size, seq).items() if k != "labels"}
    return model, batch


def variants(model, batch):
    rows = batch["input_ids"].shape[0]
    interleaved = [NAMES[i % 4] for i in range(rows)]           # worst case: every row's neighbour differs
    grouped = sorted(interleaved)                                # rows already grouped by adapter

    def single():
        pl.activate(model, "a0")
        return model(**batch)

    def mixed(names):
        return lambda: model(**batch, adapter_names=names)

    return {"single adapter": single, "4 adapters, interleaved rows": mixed(interleaved),
            "4 adapters, grouped rows": mixed(grouped)}


@torch.no_grad()
def measure(runs: dict, reps: int) -> dict[str, tuple[float, float]]:
    """Median (cpu s, wall s) per forward, visiting every variant once per repetition."""
    for run in runs.values():
        run()   # warm-up
    cpu = {k: [] for k in runs}
    wall = {k: [] for k in runs}
    for _ in range(reps):
        for key, run in runs.items():
            c, w = time.process_time(), time.perf_counter()
            run()
            cpu[key].append(time.process_time() - c)
            wall[key].append(time.perf_counter() - w)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in runs}


def report(args, tables: dict) -> str:
    lines = ["# Mixed-adapter batches: throughput", "",
             f"Machine: {platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s); shared "
             f"with other jobs, so only ratios taken in this one run mean anything.",
             f"Command: `.venv/bin/python benchmarks/mixed_batch.py --preset {args.preset} --batch {args.batch} "
             f"--seq {args.seq} --reps {args.reps} --threads {args.threads}`", "",
             f"Inference forward on `{args.preset}` (random weights), batch {args.batch} x {args.seq} tokens. "
             "Mixed: 4 adapters of the same method, rows routed with `adapter_names=[...]` (one base call "
             "per module for the whole batch; each adapter runs on its rows). Throughput relative to one "
             "active adapter at the same batch size, from the median process CPU time per forward.", ""]
    for method, results in tables.items():
        base_cpu, base_wall = results["single adapter"]
        lines += [f"## {method}", "", "| variant | cpu ms / batch | throughput x single | wall ms / batch |",
                  "|---|---|---|---|"]
        for key, (cpu, wall) in results.items():
            lines.append(f"| {key} | {1e3 * cpu:.1f} | {base_cpu / cpu:.3f} | {1e3 * wall:.1f} |")
        worst = min(base_cpu / cpu for cpu, _ in results.values())
        lines += ["", f"- worst mixed / single throughput = {worst:.3f} (goal >= 0.9): "
                      f"{'holds' if worst >= 0.9 else 'does NOT hold'}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="all-minilm-l6-v2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "mixed_batch.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = {}
    for method in args.methods:
        model, batch = setup(args.preset, method, args.batch, args.seq)
        tables[method] = measure(variants(model, batch), args.reps)
    text = report(args, tables)
    Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
