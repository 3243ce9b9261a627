"""Peak training memory of every variant (ours, HF PEFT, AdapterHub, the floor, full fine-tuning), each in
its own process, so that no variant inherits another's allocations: one process builds the model and
batch on the CPU, then forks a child per variant (imports and model building are not repeated; on CUDA
the child moves the model to the GPU itself, as CUDA does not survive fork). AdapterHub's worker does the
same in its own venv.

Measure (identical in benchmarks/peers/adapterhub_worker.py): in the child, the peak is reset and the
current usage taken as the baseline; then the variant is attached and runs 3 train
steps (forward + backward + fused AdamW). Reported: peak − baseline, i.e. what training with the method
adds on top of holding the model: adapter weights, gradients, optimizer state and activations.
  CPU: peak RSS (VmHWM, reset by writing 5 to /proc/self/clear_refs) − RSS at the reset.
  CUDA: torch.cuda.max_memory_allocated() − memory_allocated() at torch.cuda.reset_peak_memory_stats().

    .venv/bin/python benchmarks/memory.py --models t5-small --variants floor full lora peft:lora adapterhub:lora
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from peak_memory import peak_since, run_in_fork, start_peak  # noqa: E402

HERE = Path(__file__).parent


def in_fork(measure_once, *args) -> int:
    """Runs measure_once(*args) -> int in a forked child and returns its result. The child starts from the
    parent's state (imports done, model and batch built, nothing trained), touches only its own copy of
    the model, and its peak is its own; the parent stays as it was for the next variant."""
    result = run_in_fork(measure_once, *args)
    if not isinstance(result, int):
        raise RuntimeError(result)
    return result


def peak_of(model, batches: dict, variant: str, steps: int) -> int:
    """Peak bytes that attaching `variant` and running `steps` train steps add (see module doc)."""
    import speed   # the variant definitions
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    batch = {k: v.to(device) for k, v in batches["floor@+prompt" if variant == "floor@+prompt" else "default"].items()}
    variants = speed.all_variants(model, [variant])
    if variant not in variants:       # the method does not fit this shape (speed.SKIPPED says why)
        raise RuntimeError(f"skipped: {speed.SKIPPED.get(variant, 'not a variant of this environment')}")
    baseline = start_peak()
    with variants[variant](model) as runnable:
        common.train_step_timer(runnable, batch)(steps - 1)    # + its warm-up step = `steps` steps
    return peak_since(baseline)


def ours_and_peft(shape: str, variants, batch_size: int, seq_len: int, steps: int) -> dict:
    """Every in-process variant, each in its own forked child of this process, which builds the model once.
    Failures come back as strings."""
    import speed
    model = common.build(shape)
    batches = speed.batches_for(model, batch_size, seq_len)
    out = {}
    for variant in variants:
        try:
            out[variant] = in_fork(peak_of, model, batches, variant, steps)
        except RuntimeError as err:
            out[variant] = str(err)
    return out


# Large blocks always straight from mmap (glibc otherwise raises the threshold as blocks are freed and keeps
# them in its heap), so resident memory follows live tensors in both environments alike.
MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def _run_json(cmd: list[str], variants, report) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=MALLOC_ENV)
    if done.returncode:
        for variant in variants:
            report(variant, None, done.stderr.strip().splitlines()[-1:])
        return
    for variant, peak in json.loads(done.stdout.strip().splitlines()[-1]).items():
        report(variant, peak if isinstance(peak, int) else None, peak)


def measure_all(shape: str, variants, batch_size: int, seq_len: int, steps: int = 3, threads: int = 1,
                progress=None) -> dict[str, int]:
    """Peak bytes per variant: ours and HF PEFT's from one fresh process (forking per variant), AdapterHub's
    from its worker in its venv (the same)."""
    import speed
    out = {}

    def report(variant, peak, error=None):
        if peak is None:
            print(f"  memory of {variant} on {shape} failed: {error}", file=sys.stderr)
        else:
            out[variant] = peak
        if progress:
            progress(variant)

    size = ["--batch-size", str(batch_size), "--seq-len", str(seq_len), "--steps", str(steps),
            "--threads", str(threads)]
    ours = [v for v in variants if not v.startswith("adapterhub:")]
    if ours:
        _run_json([sys.executable, __file__, "--worker", "--models", shape, "--variants", *ours, *size], ours, report)
    theirs = [v for v in variants if v.startswith("adapterhub:")]
    if theirs:
        _run_json([speed.adapterhub_python(), str(HERE / "peers" / "adapterhub_worker.py"), "--config-json",
                   str(speed.config_file(shape)), "--memory", *[v.removeprefix("adapterhub:") for v in theirs],
                   "--compacter-reduction-factor", str(speed.compacter_reduction(speed.hidden_size(shape))), *size], theirs, report)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["t5-small"])
    parser.add_argument("--variants", nargs="*", default=["floor", "full", "lora", "peft:lora"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)   # see measure_all
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(ours_and_peft(args.models[0], args.variants, args.batch_size, args.seq_len, args.steps)))
        return
    for shape in args.models:
        peaks = measure_all(shape, args.variants, args.batch_size, args.seq_len, args.steps, args.threads)
        floor = peaks.get("floor")
        for name, peak in peaks.items():
            ratio = f"{peak / floor:.2f} x floor" if floor else ""
            print(f"{shape:>20} {name:>24} {peak / 2**20:9.1f} MiB {ratio}")


if __name__ == "__main__":
    main()
