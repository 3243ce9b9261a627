"""Markdown tables (the Compacter paper's Table 1 form), the goals check and the plot for
benchmarks/quality.py, from its list of per-run records."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict

FULL = "Full fine-tuning"
PROMPT_TUNING = ("Prompt tuning (vocab)", "Prompt tuning (random)")
BUDGET_PERCENT = 1.0     # the goal compares PEFT methods under 1 % trainable with full fine-tuning
GAP_POINTS = 1.0


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def glue_rows(runs: list[dict]) -> tuple[list[str], dict]:
    """(tasks, {method: {"percent", "scores": {task: [per seed]}, "average": [per seed], ...}}) for the
    table's runs, methods in run order."""
    table_runs = [r for r in runs if r.get("table", True)]
    tasks = list(dict.fromkeys(r["task"] for r in table_runs))
    rows: dict = {}
    for r in table_runs:
        row = rows.setdefault(r["method"], {"percent": [], "scores": defaultdict(dict), "s_per_step": []})
        row["percent"].append(r["percent"])
        row["scores"][r["task"]][r["seed"]] = r["score"]
        row["s_per_step"].append(r["train_s"] / max(r["steps"], 1))
    from quality_runner import GLUE_METHODS, TRANSFER
    order = [m for m in [*GLUE_METHODS, *TRANSFER] if m in rows] + [m for m in rows if m not in GLUE_METHODS
                                                                     and m not in TRANSFER]
    rows = {m: rows[m] for m in order}
    complete = averaged_tasks(tasks, rows)
    for row in rows.values():
        seeds = set.intersection(*(set(row["scores"][t]) for t in complete)) if complete else set()
        row["average"] = [statistics.mean(row["scores"][t][s] for t in complete) for s in sorted(seeds)]
    return tasks, rows


def averaged_tasks(tasks: list[str], rows: dict) -> list[str]:
    """The tasks every method has a score on: a sweep stopped early averages over these only."""
    return [t for t in tasks if all(t in row["scores"] for row in rows.values())]


def glue_table(runs: list[dict]) -> list[str]:
    tasks, rows = glue_rows(runs)
    complete = averaged_tasks(tasks, rows)
    label = "average" if complete == tasks else f"average ({', '.join(complete)})"
    lines = ["| method | trainable % | " + " | ".join(tasks) + f" | {label} | s/step |",
             "|---" * (len(tasks) + 4) + "|"]
    for label, row in rows.items():
        cells = [_cell(list(row["scores"][t].values())) if t in row["scores"] else "–" for t in tasks]
        average = _cell(row["average"]) if row["average"] else "–"
        lines.append(f"| {label} | {statistics.mean(row['percent']):.3f} | " + " | ".join(cells)
                     + f" | {average} | {statistics.mean(row['s_per_step']):.2f} |")
    return lines


def goals(runs: list[dict]) -> list[str]:
    """The issue's two goals, checked on the table's averages (means over seeds)."""
    _, rows = glue_rows(runs)
    mean = {label: statistics.mean(row["average"]) for label, row in rows.items() if row["average"]}
    lines = []
    if FULL in mean:
        lines += [f"Full fine-tuning average: {mean[FULL]:.1f}. PEFT methods under {BUDGET_PERCENT:g} % "
                  f"trainable, gap to it (goal: ≥ −{GAP_POINTS:g}):", "",
                  "| method | trainable % | average | gap | within 1 point |", "|---|---|---|---|---|"]
        for label, row in rows.items():
            percent = statistics.mean(row["percent"])
            if label == FULL or label not in mean or percent >= BUDGET_PERCENT:
                continue
            gap = mean[label] - mean[FULL]
            lines.append(f"| {label} | {percent:.3f} | {mean[label]:.1f} | {gap:+.1f} | "
                         f"{'yes' if gap >= -GAP_POINTS else 'no'} |")
        lines.append("")
    if "ATTEMPT" in mean:
        for baseline in PROMPT_TUNING:
            if baseline in mean:
                diff = mean["ATTEMPT"] - mean[baseline]
                lines.append(f"- ATTEMPT {mean['ATTEMPT']:.1f} vs {baseline} {mean[baseline]:.1f}: "
                             f"{diff:+.1f} ({'holds' if diff > 0 else 'does not hold'})")
        lines.append("")
    return lines


def e2e_table(runs: list[dict]) -> list[str]:
    lines = ["| method | trainable % | trainable | BLEU | ROUGE-L | steps | s/step |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r["test"]
        lines.append(f"| {r['method']} | {r['percent']:.3f} | {r['trainable']:,} | {100 * m.get('bleu', 0):.1f} | "
                     f"{100 * m.get('rouge_l', m.get('rougeL', 0)):.1f} | {r['steps']} | "
                     f"{r['train_s'] / max(r['steps'], 1):.2f} |")
    return lines


def timing(payload: dict) -> list[str]:
    runs = payload["glue_runs"] + payload["e2e_runs"]
    if not runs:
        return []
    setup = statistics.mean(r["setup_s"] for r in runs)
    train = sum(r["train_s"] for r in runs)
    other = sum(r["run_s"] - r["train_s"] - r["setup_s"] for r in runs)
    total = sum(r["run_s"] for r in runs)
    return [f"Where the time went ({len(runs)} runs, {total / 60:.1f} min in runs): training steps "
            f"{100 * train / total:.0f} %, setup (model load, data, attach) {setup:.1f} s per run "
            f"({100 * sum(r['setup_s'] for r in runs) / total:.0f} %), final test evaluation and save "
            f"{100 * other / total:.0f} %.", ""]


def to_markdown(payload: dict, png: str | None = None) -> str:
    meta = payload["meta"]
    lines = [f"# Quality on real data: {meta['mode']} mode", "",
             f"Wall time {meta['wall_min']:.1f} min (GLUE part {meta['glue_min']:.1f} min) on {meta['machine']}; "
             f"torch {meta['torch']}; {meta.get('precision', 'fp32')} on {meta.get('device', 'cpu')}. Exact "
             "settings: the `meta.settings` entry of the JSON file beside this one.", ""]
    if "planned_runs" in meta:
        lines += [f"Runs: {meta['runs_done']} of {meta['planned_runs']} planned; CUDA path checks "
                  f"{'passed' if meta['checks_ok'] else '**failed**'} (`{meta['mode']}` checks file beside this one).", ""]
        lines += [f"- **failed**: {e['method']} {e['task']} seed {e['seed']}: {e['error']}" for e in meta["errors"]]
        lines += [""] if meta["errors"] else []
    if meta.get("partial"):
        lines += ["**Partial: the run had not finished (or was stopped) when this was written; the tables "
                  "hold the runs completed so far.**", ""]
    settings = meta["settings"]
    if payload["glue_runs"]:
        budgets = ", ".join(f"{t}: {json.dumps(b)}" for t, b in settings["tasks"].items())
        sources = ", ".join(f"{t}: {json.dumps(b)}" for t, b in settings["source_tasks"].items())
        model = "a tiny random BERT (smoke)" if settings.get("smoke") else "MiniLM (all-MiniLM-L6-v2)"
        lines += [f"## {model} on GLUE, test split (DESIGN §5 splits)", "",
                  f"Budgets per task: {budgets}. Seeds: {settings['seeds']}."
                  + (f" SPoT/ATTEMPT sources also trained on: {sources}." if sources else ""),
                  "Metrics: CoLA MCC, MRPC mean of accuracy and F1, STS-B mean of Pearson and Spearman, "
                  "others accuracy; × 100. s/step: seconds per training step (at each task's batch size).", ""]
        if meta.get("train_pooler"):
            lines += ["**`--train-pooler`: every method trains BERT's pooler (its dense layer: 147,840 parameters on "
                      "MiniLM) with its head.**", ""]
        lines += glue_table(payload["glue_runs"]) + [""]
        if png:
            lines += [f"![average vs trainable %]({png})", ""]
        lines += ["### Goals", ""] + goals(payload["glue_runs"])
    if payload["e2e_runs"]:
        lines += ["## SmolLM2-135M on E2E NLG, test = the dev set's distinct MRs", "",
                  f"Budget: {json.dumps(settings['e2e'])} (train = the first rows of the training file after "
                  "holding out 1K rows as validation; test = the first N distinct MRs of the dev set, "
                  "all references each).", ""]
        lines += e2e_table(payload["e2e_runs"]) + [""]
    lines += ["## Time", ""] + timing(payload)
    return "\n".join(lines) + "\n"


def plot(payload: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks, rows = glue_rows(payload["glue_runs"])
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, row in rows.items():
        if not row["average"]:
            continue
        x, y = statistics.mean(row["percent"]), statistics.mean(row["average"])
        err = statistics.stdev(row["average"]) if len(row["average"]) > 1 else 0
        ax.errorbar(x, y, yerr=err, fmt="o", color="C3" if label == FULL else "C0", capsize=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if FULL in rows and rows[FULL]["average"]:
        full = statistics.mean(rows[FULL]["average"])
        ax.axhline(full, color="C3", lw=0.8)
        ax.axhline(full - GAP_POINTS, color="C3", lw=0.8, ls="--", label="full FT − 1 point")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of the base model)")
    ax.set_ylabel(f"average test score ({', '.join(averaged_tasks(tasks, rows))})")
    ax.set_title(f"MiniLM, {payload['meta']['mode']} mode")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
