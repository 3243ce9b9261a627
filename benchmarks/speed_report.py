"""Markdown tables, goal checks and the plot for benchmarks/speed.py's results (kept apart so a saved
speed.json can be re-rendered without timing anything)."""
from __future__ import annotations

from pathlib import Path

PEERS = ("peft", "adapterhub")
ADAPTER_STYLE = ("houlsby", "pfeiffer", "adapterdrop", "low_rank", "phm_adapter", "compacter", "compacter++",
                 "lora", "ia3", "bitfit")
PROMPTS = ("prompt_tuning",)        # compared with the floor at the longer sequence they imply
NOISE = 0.02                        # ratios this close count as a tie on a shared 2-core machine


def floor_of(name: str, values: dict) -> float | None:
    """The floor a variant is compared with: its own environment's, at its own sequence length."""
    if name.startswith("adapterhub:"):
        return values.get("adapterhub:floor")
    if name.removeprefix("peft:") in PROMPTS:
        return values.get("floor@+prompt")
    return values.get("floor")


def ratio(name: str, values: dict) -> float | None:
    base = floor_of(name, values)
    return values[name] / base if name in values and base else None


def methods_in(values: dict) -> list[str]:
    names = []
    for key in values:
        method = key.split(":", 1)[-1]
        if method not in ("floor", "full", "floor@+prompt") and method not in names:
            names.append(method)
    return names


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def _mem(name, peaks):
    r = ratio(name, peaks)
    return "—" if r is None else f"{peaks[name] / 2**20:.0f} ({r:.2f})"


def shape_table(shape: str, result: dict) -> list[str]:
    steps, peaks, meta = result["step_s"], result.get("peak_bytes", {}), result["meta"]
    lines = [f"## {shape}", "",
             f"batch {meta['batch_size']} x {meta['seq_len']} tokens; median of {meta['reps']} interleaved blocks x "
             f"{meta['steps']} steps per variant; {meta['machine']}; timing {result['wall_s']['timing']} s, "
             f"memory {result['wall_s']['memory']} s of wall time. Command: `{meta['command']}`.", "",
             "Floors (ms / step): " + ", ".join(f"{k} {1000 * steps[k]:.0f}" for k in
                                                 ("floor", "floor@+prompt", "adapterhub:floor", "full") if k in steps)
             + (f". Full fine-tuning = {steps['full'] / steps['floor']:.2f} x floor." if "full" in steps else "."), "",
             "| method | ours ms | ours x floor | HF PEFT x floor | AdapterHub x floor | ours x full FT "
             "| ours x floor, wall | peak MiB ours (x floor) | HF PEFT | AdapterHub |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    wall = result.get("step_wall_s", {})
    rerun = {v for r in result.get("reruns", []) for v in r["variants"]}
    for method in methods_in(steps):
        full = steps.get("full") if (method in rerun) == ("full" in rerun) else None   # never across runs
        ours = steps.get(method)
        mark = " †" if method in PROMPTS else ""
        lines.append(
            f"| {method}{mark} | {_fmt(ours and 1000 * ours, '.0f')} | {_fmt(ratio(method, steps))} "
            f"| {_fmt(ratio('peft:' + method, steps))} | {_fmt(ratio('adapterhub:' + method, steps))} "
            f"| {_fmt(ours / full if ours and full else None)} | {_fmt(ratio(method, wall))} | {_mem(method, peaks)} "
            f"| {_mem('peft:' + method, peaks)} | {_mem('adapterhub:' + method, peaks)} |")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"| {name} | not run: {why[:120]} | | | | | | | | |")
    full = steps.get("full")
    if "full" in peaks and "floor" in peaks:
        lines.append(f"| *full fine-tuning* | {_fmt(full and 1000 * full, '.0f')} | {_fmt(ratio('full', steps))} "
                     f"| | | 1.000 | {_fmt(ratio('full', wall))} | {_mem('full', peaks)} | | |")
    return lines + [""]


def goal_lines(results: dict) -> list[str]:
    """One line per goal and shape: holds / does not hold, with the numbers."""
    out = ["## Goals (computed from the tables above)", ""]
    for shape, result in results.items():
        steps, peaks = result["step_s"], result.get("peak_bytes", {})
        ours = {m: ratio(m, steps) for m in ADAPTER_STYLE if m in steps}
        slow = {m: r for m, r in ours.items() if r > 1.05}
        out.append(f"- **{shape}, adapter-style and low-rank train step <= 1.05 x floor**: "
                   + ("holds for all " + str(len(ours)) if not slow else
                      f"holds for {len(ours) - len(slow)} of {len(ours)}; does not hold for "
                      + ", ".join(f"{m} {r:.3f}" for m, r in slow.items())))
        out.append(f"- **{shape}, no worse than the best peer (train step x floor)**: " + _versus(ours, steps))
        out.append(f"- **{shape}, absolute train step, ours / fastest peer (same run)**: " + _absolute(steps))
        for method in PROMPTS:
            r = ratio(method, steps)
            if r is not None:
                verdict = "holds" if r <= 1 + NOISE else "does not hold"
                out.append(f"- **{shape}, {method} = floor at +100 tokens**: {verdict} ({r:.3f} x floor@+prompt; "
                           f"HF PEFT {_fmt(ratio('peft:' + method, steps))})")
        mem = {m: ratio(m, peaks) for m in methods_in(peaks) if m in peaks}
        out.append(f"- **{shape}, peak training memory <= the peers' (x own floor)**: " + _versus(mem, peaks))
    return out + [""]


def _absolute(steps: dict) -> str:
    """Ours over the fastest peer in seconds per step: the two environments run different transformers
    versions, so their floors differ, and a ratio to one's own floor can favour the slower base."""
    pairs = []
    for method in methods_in(steps):
        peers = [steps[f"{p}:{method}"] for p in PEERS if f"{p}:{method}" in steps]
        if method in steps and peers:
            pairs.append(f"{method} {steps[method] / min(peers):.3f}")
    return ", ".join(pairs) if pairs else "no peer measured"


def _versus(ours: dict, values: dict) -> str:
    parts, worse = [], []
    for method, r in ours.items():
        peers = {p: ratio(f"{p}:{method}", values) for p in PEERS}
        peers = {p: v for p, v in peers.items() if v is not None}
        if r is None or not peers:
            continue
        best_peer, best = min(peers.items(), key=lambda kv: kv[1])
        text = f"{method} {r:.3f} vs {best_peer} {best:.3f}"
        (worse if r > best * (1 + NOISE) else parts).append(text)
    if not parts and not worse:
        return "no peer measured"
    verdict = "holds" if not worse else "does not hold for " + "; ".join(worse)
    return verdict + (f" (holds: {'; '.join(parts)})" if parts else "")


def to_markdown(results: dict, notes: Path | None = None, image: str = "speed.png") -> str:
    lines = ["# Train step and training memory: ratios to the frozen-backbone floor", "",
             "Random weights (speed does not depend on them). Every ratio is between two numbers from the same "
             "run. The **floor** is the same model and batch with everything frozen except one scalar scaling "
             "the input embeddings: forward and backward through every activation but no weight gradient, the "
             "cost no method that trains something in the first layer can beat (methods that start deeper "
             "stop backward earlier and can read below 1). Each side is divided by its own environment's floor: HF PEFT runs in "
             "peftlab's process (transformers 5.x), AdapterHub `adapters` 1.3 in its own venv (transformers "
             "4.57, eager attention), so `AdapterHub x floor` divides by AdapterHub's own floor. A train step is "
             "forward + backward + fused AdamW (`peftlab.train.optim.adamw`; the AdapterHub worker uses the "
             "same `torch.optim.AdamW(fused=True)`). Times are medians of this process's **CPU time** per step "
             "(one thread, so the step's own work, without the waits for a core that other jobs on this shared "
             "2-core machine cause); `ours x floor, wall` is the same ratio from wall time, as a check.",
             "",
             "† prompt tuning (100 tokens) is divided by the floor at the longer sequence it implies "
             "(floor@+prompt: 100 more input tokens, the same targets), ours and HF PEFT's alike.", "",
             "Peak memory: in a fresh process per variant, peak resident memory while attaching and running 3 "
             "train steps, minus the resident memory just before (model and batch already built); on CUDA the "
             "same with `torch.cuda.max_memory_allocated`. See benchmarks/memory.py. In brackets: x the same "
             "environment's floor.", ""]
    for shape, result in results.items():
        lines += shape_table(shape, result)
    lines += goal_lines(results)
    if notes is not None and notes.exists():
        lines += [notes.read_text()]
    lines.append(f"![ratios to the floor]({image})")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.6 * len(results)), squeeze=False)
    colours = {"": "tab:blue", "peft:": "tab:orange", "adapterhub:": "tab:green"}
    labels = {"": "peftlab", "peft:": "HF PEFT", "adapterhub:": "AdapterHub"}
    for ax, (shape, result) in zip(axes[:, 0], results.items()):
        steps = result["step_s"]
        methods = methods_in(steps)
        highest, lowest = 1.6, 0.8
        for offset, prefix in enumerate(colours):
            ys = [i + 0.27 * (offset - 1) for i in range(len(methods))]
            xs = [ratio(prefix + m, steps) or 0 for m in methods]
            highest = max(highest, *xs)
            lowest = min(lowest, *[x for x in xs if x] or [lowest])
            ax.barh(ys, xs, height=0.26, color=colours[prefix], label=labels[prefix])
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.05, color="tab:red", lw=0.8, ls="--", label="1.05 x floor")
        ax.set_xlim(lowest - 0.05, highest + 0.05)
        ax.set_title(f"{shape}: train step / own floor (prompt tuning: / floor at +100 tokens)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
