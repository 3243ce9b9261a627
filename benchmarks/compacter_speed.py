"""Speed of the Compacter family and Intrinsic SAID, as ratios measured in one run.

1. The fast Walsh–Hadamard transform of 2^24 float32 values on the CPU (goal: well under a second).
2. Train steps (forward + backward + AdamW) of Compacter and Compacter++ against the frozen-backbone
   floor (backbone frozen, one trainable scalar on the input embeddings so backward still runs through
   every activation: `common.floor`), same model and batch. Goal: within 1.05x.
3. Intrinsic SAID (d' = 20,000, Fastfood) against full fine-tuning on a T5-small-sized model. Goal: <= 2x
   (the Compacter paper measured +242 % time for SAID).

Every variant has its own copy of the same randomly initialized model, attached once; repetitions visit
the variants in a rotating order so drift on a shared machine hits all alike; medians are reported.

    .venv/bin/python benchmarks/compacter_speed.py [--preset t5-small] [--batch 8] [--seq 64] [--reps 3]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (benchmarks/common.py: build, batch_for, floor, full_finetune, peftlab_method)

import peftlab as pl  # noqa: E402
from peftlab.ops.fwht import fwht_raw  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "compacter_speed.md"
VARIANTS = ("floor", "compacter", "compacter++", "full", "said")


def time_fwht(bits: int = 24, repeats: int = 5) -> tuple[float, float]:
    """(best, median) seconds of one unnormalized transform of 2^bits float32 values."""
    x = torch.randn(1 << bits)
    fwht_raw(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fwht_raw(x)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def prepare(model, name: str, stack: ExitStack):
    """A private copy of `model` set up for variant `name`."""
    copy_ = copy.deepcopy(model)
    if name == "floor":
        return stack.enter_context(common.floor(copy_))
    if name == "full":
        return stack.enter_context(common.full_finetune(copy_))
    configs = {
        "compacter": pl.Compacter(reduction_factor=32, phm_dim=4, unfreeze_layer_norms=True),
        "compacter++": pl.CompacterPlusPlus(reduction_factor=32, phm_dim=4, unfreeze_layer_norms=True),
        "said": pl.IntrinsicSAID(intrinsic_dim=20_000),
    }
    return stack.enter_context(common.peftlab_method(copy_, configs[name]))


def step_medians(model, batch, names, reps: int, steps: int) -> dict[str, tuple]:
    """Per variant: (median cpu, median wall, fastest cpu) seconds per train step, the paired ratio to the
    floor: the median over repetitions of (this variant's / the floor's median cpu time in that
    repetition), which cancels drift slower than one repetition, and that ratio's quartiles."""
    with ExitStack() as stack:
        runners = {}
        for name in names:
            runners[name] = common.step_clocks_timer(prepare(model, name, stack), batch)
            runners[name](0)                     # one untimed warm-up step; blocks below need none
            print(f"  prepared {name}", flush=True)
        times = {name: [] for name in names}
        per_rep = {name: [] for name in names}
        for rep in range(reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                block = runners[name](steps, warmup=False)
                times[name] += block
                per_rep[name].append(statistics.median(c for c, _ in block))
            print(f"  repetition {rep + 1}/{reps}: " + ", ".join(
                f"{n} {statistics.median(c for c, _ in t):.3f}s" for n, t in times.items()), flush=True)
    ratios = {name: [a / b for a, b in zip(per_rep[name], per_rep["floor"])] for name in names}
    return {name: (statistics.median(c for c, _ in t), statistics.median(w for _, w in t), min(c for c, _ in t),
                   statistics.median(ratios[name]), _quartiles(ratios[name])) for name, t in times.items()}


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartile of the per-repetition ratios: how far one repetition's ratio spreads."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def report(args, fwht_times, medians, allocator: str) -> str:
    cpu = {name: c for name, (c, *_) in medians.items()}
    paired = {name: r for name, (_, _, _, r, _) in medians.items()}
    spread = {name: q for name, (*_, q) in medians.items()}
    floor, full = cpu["floor"], cpu.get("full")
    fastest_floor = medians["floor"][2]
    rows = [f"| {name} | {c:.3f} | {r:.3f} | {c / floor:.3f} | {f'{c / full:.3f}' if full else '—'} | "
            f"{m / fastest_floor:.3f} | {w:.3f} | {w / medians['floor'][1]:.3f} |"
            for name, (c, w, m, r, _) in medians.items()]
    lines = [
        "# Compacter family and Intrinsic SAID: speed",
        "",
        f"Machine: {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"shared with other jobs, so only ratios taken in this one run mean anything. Memory allocator: {allocator}.",
        f"Command: `.venv/bin/python benchmarks/compacter_speed.py --preset {args.preset} --batch {args.batch} "
        f"--seq {args.seq} --reps {args.reps} --steps {args.steps} --threads {args.threads} "
        f"--variants {' '.join(medians)}{' --default-allocator' if args.default_allocator else ''}`",
        "",
        "## Fast Walsh–Hadamard transform, 2^24 float32 values (goal: well under 1 s)",
        "",
        f"best {fwht_times[0]:.3f} s, median {fwht_times[1]:.3f} s of 5",
        "",
        f"## Train step on `{args.preset}` (random weights), batch {args.batch} x {args.seq} tokens"
        f" (+ {max(2, args.seq // 4)} target tokens)",
        "",
        "Median per step (forward + backward + AdamW) of this process's CPU time (primary; the machine is",
        "shared, and CPU time leaves out waiting for a core) and of wall time. floor = frozen backbone with",
        "one trainable scalar on the input embeddings (backward through every activation, no weight",
        "gradients). Compacter and Compacter++ also train the layer norms, as in the paper. Every variant",
        "uses the runner's optimizer (`peftlab.train.optim.adamw`: fused AdamW). *paired x floor* (the",
        "primary ratio) is the median over repetitions of the ratio of the two medians taken side by side",
        "in one repetition; *x floor* divides the overall medians.",
        "",
        "| variant | cpu s / step | paired x floor | x floor | x full FT | fastest x floor | wall s / step |"
        " wall x floor |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- {name} / floor = {paired[name]:.3f} paired (quartiles of the repetitions {spread[name][0]:.3f}–"
          f"{spread[name][1]:.3f}), {cpu[name] / floor:.3f} of the medians, "
          f"{medians[name][2] / fastest_floor:.3f} fastest step (goal <= 1.05): "
          f"{'holds' if paired[name] <= 1.05 else 'does not hold'}" for name in ("compacter", "compacter++")
          if name in paired),
        *([f"- Intrinsic SAID (d' = 20,000, Fastfood) / full fine-tuning = {cpu['said'] / full:.3f} (goal <= 2;"
           f" the Compacter paper: 3.42)"] if "said" in cpu and full else []),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="t5-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and repetition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared box)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="variants to time (the floor is always timed)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc as it is (the runner keeps freed memory: train/allocator.py)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = common.set_allocator(args.default_allocator)
    fwht_times = time_fwht()
    print(f"FWHT 2^24: best {fwht_times[0]:.3f}s", flush=True)
    model = common.build(args.preset)
    batch = common.batch_for(model, args.batch, args.seq)
    names = ["floor", *[v for v in args.variants if v != "floor"]]
    medians = step_medians(model, batch, names, args.reps, args.steps)
    text = report(args, fwht_times, medians, allocator)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
