"""Inference speed: the base model vs LoRA and IA3, unmerged and merged (ours), and HF PEFT's LoRA unmerged
and merged, each side as a ratio to a base forward timed on ITS OWN model object in the same run. Forward
only, `torch.inference_mode()`, eval mode, timed in interleaved blocks (each repetition visits every
variant once, in a rotating order).

Why the same object: two deep copies of one model can differ by 3-4 % in forward time on CPU (where their
weights landed in memory), which an earlier version of this script, timing `base` on a bare copy, read as
adapter overhead. Now:
- ours: one model with LoRA and IA3 attached side by side (activated one at a time; "merged" folds the
  active one into the weights in place, outside the timed region, and leaves our slots in place).
  `base` detaches both adapters for its block (the model is then bit for bit the base model, on the same
  weight tensors) and re-attaches them with their weights afterwards, outside the timed region;
  `base, adapters inactive` keeps them attached and deactivated (`pl.deactivate`: slots in place, no part runs).
- HF PEFT: its LoRA on a second copy (`merge_adapter()` likewise keeps its layers in place); `peft:base`
  is that object under `disable_adapter()` (its layers in place, adapters off).
- `base (bare copy)`: the untouched third copy, the old reference, kept to show the copy-to-copy gap.
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
    bare = common.build(shape).eval()
    ours = copy.deepcopy(bare)
    pl.attach(ours, pl.config_from_dict({"method": "lora", "r": 8, "alpha": 16}), name="lora")
    pl.attach(ours, pl.config_from_dict({"method": "ia3"}), name="ia3")
    for name in ("lora", "ia3"):
        _perturb(ours, name)
    ours.eval()
    theirs = hf_peft.lora_for_inference(copy.deepcopy(bare)) if hf_peft.configs(bare) else None
    batch = {k: v for k, v in common.batch_for(bare, batch_size, seq_len).items() if k != "labels"}
    if bare.config.is_encoder_decoder:       # one decoder step per row: a forward as generation does it
        batch["decoder_input_ids"] = torch.zeros((batch_size, 1), dtype=torch.long)
    elif "ForCausalLM" in type(bare).__name__ or "LMHead" in type(bare).__name__:
        batch["logits_to_keep"] = 1          # a prefill as generation does it: logits of the last position only
    return bare, ours, theirs, batch


@contextmanager
def ours_detached(model):
    """The base forward on our model object: detach every adapter (restoring the base model bit for bit,
    on the same weight tensors), then re-attach them in the same order with the same weights."""
    configs = pl.adapters(model)
    saved = {name: [p.detach().clone() for p in pl.core.attachment_parameters(model, name)] for name in configs}
    for name in configs:
        pl.detach(model, name)
    try:
        yield model
    finally:
        for name, config in configs.items():
            pl.attach(model, config, name=name)
            with torch.no_grad():
                for p, value in zip(pl.core.attachment_parameters(model, name), saved[name], strict=True):
                    p.copy_(value)
        model.eval()                         # fresh parts start in training mode


@contextmanager
def ours_inactive(model):
    pl.deactivate(model)
    yield model


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


@contextmanager
def peft_disabled(model):
    with model.disable_adapter():
        yield model


def variants(bare, ours, theirs) -> dict:
    out = {"base": lambda: ours_detached(ours), "base, adapters inactive": lambda: ours_inactive(ours)}
    for name in ("lora", "ia3"):
        out[f"{name} unmerged"] = lambda name=name: ours_as(ours, name, merged=False)
        out[f"{name} merged"] = lambda name=name: ours_as(ours, name, merged=True)
    if theirs is not None:
        out["peft:base"] = lambda: peft_disabled(theirs)
        out["peft:lora unmerged"] = lambda: peft_as(theirs, merged=False)
        out["peft:lora merged"] = lambda: peft_as(theirs, merged=True)
    out["base (bare copy)"] = lambda: nullcontext(bare)
    return out


def own_base(variant: str) -> str:
    """The same-object base a variant is compared with: HF PEFT's rows with `peft:base`, ours with `base`."""
    return "peft:base" if variant.startswith("peft:") else "base"


@torch.inference_mode()
def interleaved(runs: dict, batch: dict, reps: int, calls: int) -> dict[str, dict]:
    """Median {"cpu", "wall"} seconds per forward, the fastest forward's CPU seconds ("cpu_min": other
    jobs only ever add time), and "blocks": each block's median CPU seconds in repetition order (for
    paired ratios). Each block enters the variant, warms up once, times `calls`
    forwards. CPU time (one thread) is primary: the machine is shared, wall time waits for cores."""
    times = {k: [] for k in runs}
    blocks = {k: [] for k in runs}
    names = list(runs)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            with runs[name]() as model:
                model(**batch)
                block = []
                for _ in range(calls):
                    cpu, wall = time.process_time(), time.perf_counter()
                    model(**batch)
                    block.append((time.process_time() - cpu, time.perf_counter() - wall))
            times[name] += block
            blocks[name].append(statistics.median(c for c, _ in block))
    return {k: {"cpu": statistics.median(c for c, _ in v), "wall": statistics.median(w for _, w in v),
                "cpu_min": min(c for c, _ in v), "blocks": blocks[k]} for k, v in times.items()}


def ratios(clocks: dict, clock: str = "cpu") -> dict[str, float]:
    """Each variant's median over its own side's same-object base, on one clock."""
    return {name: v[clock] / clocks[own_base(name)][clock] for name, v in clocks.items()}


def paired_ratios(clocks: dict) -> dict[str, float]:
    """Median over repetitions of (the variant's block / its own base's block in the same repetition):
    a slow stretch of the shared machine then hits both sides of a ratio."""
    return {name: statistics.median(a / b for a, b in zip(v["blocks"], clocks[own_base(name)]["blocks"]))
            for name, v in clocks.items()}


def goal_lines(shape: str, clocks: dict) -> list[str]:
    r = ratios(clocks)
    lines = []
    for name in ("lora merged", "ia3 merged"):
        lines.append(f"- {shape}, {name} <= 1.02 x base: {'holds' if r[name] <= 1.02 else 'does not hold'} "
                     f"({r[name]:.3f}; {r[name] / r['base, adapters inactive']:.3f} x base with adapters inactive)")
    if "peft:lora unmerged" in r:
        ours, theirs = r["lora unmerged"] - 1, r["peft:lora unmerged"] - 1
        ours_inactive_ = r["lora unmerged"] / r["base, adapters inactive"] - 1
        lines.append(f"- {shape}, unmerged LoRA overhead <= HF PEFT's: "
                     f"{'holds' if ours <= theirs + 0.01 else 'does not hold'} "
                     f"(ours {100 * ours:+.1f} % over the detached base, {100 * ours_inactive_:+.1f} % over "
                     f"adapters inactive; HF PEFT {100 * theirs:+.1f} % over its disabled adapters; "
                     "ties within 1 point)")
        lines.append(f"- {shape}, HF PEFT merged LoRA (the base forward through its layers): "
                     f"{r['peft:lora merged']:.3f} x peft:base")
    copy_gap = clocks["base (bare copy)"]["cpu"] / clocks["base"]["cpu"]
    lines.append(f"- {shape}, the bare copy's base forward: {copy_gap:.3f} x the same-object base")
    return lines


def to_markdown(results: dict, meta: dict, png: str) -> str:
    lines = ["# Inference: base vs unmerged vs merged LoRA / IA3, base timed on the same model object", "",
             f"{meta['machine']}; batch {meta['batch_size']} x {meta['seq_len']} tokens (encoder-decoders: one "
             "decoder position; causal LMs: logits of the last position, as a generation prefill); median of "
             f"{meta['reps']} interleaved blocks x {meta['calls']} forwards under `torch.inference_mode()`. "
             "Command: `" + meta["command"] + "`.", "",
             "`x own base`: ratio of medians, ours over `base` (our model object with both adapters detached, re-attached after "
             "the block), HF PEFT's rows over `peft:base` (its object under `disable_adapter()`). "
             "`paired`: the median over repetitions of the ratio between the two blocks of one repetition; `fastest`: the ratio of the fastest "
             "forwards (other jobs on the machine only ever add time). "
             "`base, adapters inactive`: our object with its slots in place and no adapter active. "
             "`base (bare copy)`: an untouched copy of the model, the reference of earlier runs. Merged "
             "adapters stay attached (their slots remain, their parts sit out), as HF PEFT's "
             "`merge_adapter()` keeps its layers.", ""]
    goals = []
    for shape, clocks in results.items():
        cpu, wall, paired = ratios(clocks), ratios(clocks, "wall"), paired_ratios(clocks)
        fastest = ratios(clocks, "cpu_min")
        bare = clocks["base (bare copy)"]["cpu"]
        lines += [f"## {shape}", "", "| variant | CPU ms / forward | x own base | x own base, paired | "
                  "x own base, fastest | x own base, wall | x bare copy |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {1000 * v['cpu']:.1f} | {cpu[name]:.3f} | {paired[name]:.3f} | {fastest[name]:.3f} | "
                  f"{wall[name]:.3f} | {v['cpu'] / bare:.3f} |" for name, v in clocks.items()]
        lines.append("")
        goals += goal_lines(shape, clocks)
    return "\n".join(lines + ["## Goals", ""] + goals + ["", f"![inference ratios]({png})", ""])


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.8 * len(results), 3.8), squeeze=False)
    for ax, (shape, clocks) in zip(axes[0], results.items()):
        r = ratios(clocks)
        names = list(r)
        ax.barh(names, [r[n] for n in names],
                color=["tab:orange" if n.startswith("peft:") else "tab:gray" if "copy" in n else "tab:blue"
                       for n in names])
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.02, color="tab:red", lw=0.8, ls="--")
        ax.set_xlim(min(0.9, min(r.values()) - 0.02), max(1.1, max(r.values()) + 0.02))
        ax.set_title(f"{shape}: forward / own base")
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
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc as it is (the runner keeps freed memory: train/allocator.py)")
    parser.add_argument("--out", default=str(RESULTS / "inference.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = common.set_allocator(args.default_allocator)
    torch.manual_seed(0)
    results = {}
    for shape in args.models:
        bare, ours, theirs, batch = setup(shape, args.batch_size, args.seq_len)
        results[shape] = interleaved(variants(bare, ours, theirs), batch, args.reps, args.calls)
        print(shape, {k: round(v, 3) for k, v in ratios(results[shape]).items()}, flush=True)
        del bare, ours, theirs
    meta = {"machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
                       f"memory allocator: {allocator}",
            "batch_size": args.batch_size, "seq_len": args.seq_len, "reps": args.reps, "calls": args.calls,
            "command": " ".join(["benchmarks/inference.py", *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    out.write_text(to_markdown(results, meta, out.with_suffix(".png").name))
    plot(results, out.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
