"""Inference speed: the base model vs LoRA and IA3, unmerged and merged (ours), and HF PEFT's LoRA unmerged
and merged, as ratios to the base forward in the same run. Forward only, `torch.inference_mode()`, eval
mode, timed in interleaved blocks (each repetition visits every variant once, in a rotating order).

Three copies of the random model: the bare base; ours with LoRA and IA3 attached side by side (activated
one at a time; "merged" folds the active one into the weights for its block, outside the timed region,
and leaves our slots in place); HF PEFT's LoRA (`merge_adapter()` likewise keeps its layers in place).
Goals: merged <= 1.02 x base; our unmerged LoRA overhead (x base - 1) no more than HF PEFT's.
Mixed-adapter batches: benchmarks/mixed_batch.py (results/mixed_batch.md).

    nice -n 5 .venv/bin/python benchmarks/inference.py --models t5-base --threads 1
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import peftlab as pl  # noqa: E402
from peers import hf_peft  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _perturb(model, name):
    """Non-zero adapter weights (LoRA's B starts at zero), so merged and unmerged compute something."""
    with torch.no_grad():
        for p in pl.core.attachment_parameters(model, name):
            p.add_(0.01 * torch.randn_like(p))


def setup(shape: str, batch_size: int, seq_len: int):
    base = common.build(shape).eval()
    ours = copy.deepcopy(base)
    pl.attach(ours, pl.config_from_dict({"method": "lora", "r": 8, "alpha": 16}), name="lora")
    pl.attach(ours, pl.config_from_dict({"method": "ia3"}), name="ia3")
    for name in ("lora", "ia3"):
        _perturb(ours, name)
    ours.eval()
    theirs = hf_peft.lora_for_inference(copy.deepcopy(base)) if hf_peft.configs(base) else None
    batch = {k: v for k, v in common.batch_for(base, batch_size, seq_len).items() if k != "labels"}
    if base.config.is_encoder_decoder:       # one decoder step per row: a forward as generation does it
        batch["decoder_input_ids"] = torch.zeros((batch_size, 1), dtype=torch.long)
    elif "ForCausalLM" in type(base).__name__ or "LMHead" in type(base).__name__:
        batch["logits_to_keep"] = 1          # a prefill as generation does it: logits of the last position only
    return base, ours, theirs, batch


@contextmanager
def ours_as(model, name: str, merged: bool):
    pl.activate(model, name)
    if merged:
        pl.merge(model, name)
    try:
        yield model
    finally:
        if merged:
            pl.unmerge(model, name)


@contextmanager
def peft_as(model, merged: bool):
    if merged:
        model.merge_adapter()
    try:
        yield model
    finally:
        if merged:
            model.unmerge_adapter()


def variants(base, ours, theirs) -> dict:
    out = {"base": lambda: nullcontext(base)}
    for name in ("lora", "ia3"):
        out[f"{name} unmerged"] = lambda name=name: ours_as(ours, name, merged=False)
        out[f"{name} merged"] = lambda name=name: ours_as(ours, name, merged=True)
    if theirs is not None:
        out["peft:lora unmerged"] = lambda: peft_as(theirs, merged=False)
        out["peft:lora merged"] = lambda: peft_as(theirs, merged=True)
    return out


@torch.inference_mode()
def interleaved(runs: dict, batch: dict, reps: int, calls: int) -> dict[str, dict[str, float]]:
    """Median {"cpu", "wall"} seconds per forward; each block enters the variant, warms up once, times
    `calls` forwards. CPU time (one thread) is primary: the machine is shared, wall time waits for cores."""
    times = {k: [] for k in runs}
    names = list(runs)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            with runs[name]() as model:
                model(**batch)
                for _ in range(calls):
                    cpu, wall = time.process_time(), time.perf_counter()
                    model(**batch)
                    times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return {k: {"cpu": statistics.median(c for c, _ in v), "wall": statistics.median(w for _, w in v)}
            for k, v in times.items()}


def to_markdown(results: dict, meta: dict) -> str:
    lines = ["# Inference: base vs unmerged vs merged LoRA / IA3", "",
             f"{meta['machine']}; batch {meta['batch_size']} x {meta['seq_len']} tokens (encoder-decoders: one "
             f"decoder position; causal LMs: logits of the last position, as a generation prefill); median of {meta['reps']} interleaved blocks x {meta['calls']} forwards under "
             "`torch.inference_mode()`. Command: `" + meta["command"] + "`.", "",
             "Merged adapters stay attached (their slots remain, their parts sit out), as HF PEFT's "
             "`merge_adapter()` keeps its layers; `base` is the untouched model.", ""]
    goals = []
    for shape, clocks in results.items():
        medians = {k: v["cpu"] for k, v in clocks.items()}
        base, wall_base = medians["base"], clocks["base"]["wall"]
        lines += [f"## {shape}", "", "| variant | CPU ms / forward | x base | x base, wall |", "|---|---|---|---|"]
        lines += [f"| {name} | {1000 * t:.1f} | {t / base:.3f} | {clocks[name]['wall'] / wall_base:.3f} |"
                  for name, t in medians.items()]
        lines.append("")
        for name in ("lora merged", "ia3 merged"):
            r = medians[name] / base
            goals.append(f"- {shape}, {name} <= 1.02 x base: {'holds' if r <= 1.02 else 'does not hold'} ({r:.3f})")
        if "peft:lora unmerged" in medians:
            ours, theirs = medians["lora unmerged"] / base - 1, medians["peft:lora unmerged"] / base - 1
            goals.append(f"- {shape}, unmerged LoRA overhead <= HF PEFT's: "
                         f"{'holds' if ours <= theirs + 0.01 else 'does not hold'} "
                         f"(ours {100 * ours:+.1f} %, HF PEFT {100 * theirs:+.1f} %; ties within 1 point)")
    return "\n".join(lines + ["## Goals", ""] + goals + ["", "![inference ratios](inference.png)", ""])


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.4), squeeze=False)
    for ax, (shape, clocks) in zip(axes[0], results.items()):
        medians = {k: v["cpu"] for k, v in clocks.items()}
        names = list(medians)
        ax.barh(names, [medians[n] / medians["base"] for n in names],
                color=["tab:orange" if n.startswith("peft:") else "tab:blue" for n in names])
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.02, color="tab:red", lw=0.8, ls="--")
        ax.set_xlim(0.9, max(1.1, max(medians[n] / medians["base"] for n in names) + 0.02))
        ax.set_title(f"{shape}: forward / base")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["t5-small", "t5-base", "bert-base-uncased", "gpt2",
                                                        "smollm2-135m"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "inference.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for shape in args.models:
        base, ours, theirs, batch = setup(shape, args.batch_size, args.seq_len)
        results[shape] = interleaved(variants(base, ours, theirs), batch, args.reps, args.calls)
        print(shape, {k: round(v["cpu"] / results[shape]["base"]["cpu"], 3) for k, v in results[shape].items()},
              flush=True)
        del base, ours, theirs
    meta = {"machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
            "batch_size": args.batch_size, "seq_len": args.seq_len, "reps": args.reps, "calls": args.calls,
            "command": " ".join(["benchmarks/inference.py", *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    out.write_text(to_markdown(results, meta))
    plot(results, out.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
