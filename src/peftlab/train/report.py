"""The end of a run: `results.json`, `report.md`, and the result table printed to the console."""
from __future__ import annotations

import json
from pathlib import Path

from ..tasks import average


def result_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(task, split, metric, value) rows, values as percentages with two decimals."""
    rows = []
    for task, splits in results["tasks"].items():
        for split, metrics in splits.items():
            for metric, value in metrics.items():
                rows.append((task, split, metric, f"{100 * value:.2f}"))
    for split in ("validation", "test"):
        if split in results.get("average", {}):
            rows.append(("average", split, "all", f"{100 * results['average'][split]:.2f}"))
    return rows


def table(results: dict, markdown: bool = False) -> str:
    header = ("task", "split", "metric", "score (%)")
    rows = result_rows(results)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in rows)])


def averages(per_task: dict) -> dict:
    out = {}
    for split in ("validation", "test"):
        values = [average(splits[split]) for splits in per_task.values() if split in splits]
        if values:
            out[split] = sum(values) / len(values)
    return out


def write_report(run_dir: Path, results: dict) -> None:
    run_dir = Path(run_dir)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    train = results.get("train", {})
    lines = [f"# Run report: {', '.join(results['tasks'])}", "",
             f"- model: `{results['model']}`, method: `{results['method']}`",
             f"- trainable parameters: {results['trainable']:,} of {results['total']:,} "
             f"({100 * results['trainable'] / max(results['base'], 1):.3f}% of the base)",
             f"- steps: {train.get('steps')}, epochs: {train.get('epochs', 0):.2f}, "
             f"final train loss: {_number(train.get('final_loss'))} (mean over the last logging window, "
             f"as in log.jsonl; last batch: {_number(train.get('last_batch_loss'))})",
             f"- wall time: {train.get('wall_s', 0):.1f} s, {train.get('examples_per_s', 0):.1f} examples/s",
             _weights_line(results.get("best_step")),
             *[f"- **warning**: {w}" for w in results.get("warnings", [])], "",
             "## Results", "", table(results, markdown=True), "",
             "Plots: `peftlab plot RUN_DIR` writes `plots/*.png` (loss, metrics, mixing weights).", ""]
    (run_dir / "report.md").write_text("\n".join(lines))


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _weights_line(best_step) -> str:
    if best_step is None:       # eval_strategy: no
        return "- evaluated weights: the final step's (no evaluation chose a best checkpoint)"
    return f"- best checkpoint: step {best_step} (average validation metric)"
