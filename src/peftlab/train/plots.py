"""`peftlab plot RUN_DIR`: PNG curves of the training loss, the validation metrics, and every mixing-
weight series (weight per label over steps) that the run logged."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import PeftlabError
from .logs import LOG, MIXING, read_jsonl


def plot_run(run_dir) -> list[Path]:
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / LOG)
    if not records:
        raise PeftlabError(f"{run_dir / LOG}: no training log here (is {run_dir} a run directory?)")
    import matplotlib   # optional extra ([tasks]), and costly at import time: only when plotting
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt   # optional extra, as above
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = [_loss(plt, records, out_dir)]
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals:
        written.append(_metrics(plt, evals, out_dir))
    mixing = read_jsonl(run_dir / MIXING)
    for series in sorted({s for r in mixing for s in r.get("series", {})}):
        written.append(_mixing(plt, series, mixing, out_dir))
    return written


def _loss(plt, records, out_dir) -> Path:
    train = [r for r in records if r.get("kind") == "train"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("training loss"), ax.legend()
    return _save(plt, fig, out_dir / "loss.png")


def _metrics(plt, evals, out_dir) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({k for r in evals for k in r if "/" in k})
    for key in keys:
        points = [(r["step"], r[key]) for r in evals if key in r]
        ax.plot(*zip(*points), marker="o", label=key)
    ax.set_xlabel("step"), ax.set_ylabel("validation metric"), ax.set_title("validation metrics")
    ax.legend(fontsize="small")
    return _save(plt, fig, out_dir / "metrics.png")


def _mixing(plt, series, records, out_dir) -> Path:
    points = [(r["step"], r["series"][series]) for r in records if series in r.get("series", {})]
    labels = points[-1][1]["labels"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, label in enumerate(labels):
        ax.plot([s for s, _ in points], [p["weights"][index] for _, p in points], label=str(label))
    ax.set_xlabel("step"), ax.set_ylabel("mean weight"), ax.set_title(f"mixing weights: {series}")
    ax.legend(fontsize="small")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", series)
    return _save(plt, fig, out_dir / f"mixing_{safe}.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
