"""Tables, the issue's goal checks and the plot of benchmarks/quality_peers.py, from its JSON
({"meta", "runs"}): `write_results` is what the script and `--rewrite` call."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

LIBRARIES = ("peftlab", "HF PEFT", "AdapterHub")
COLOURS = {"peftlab": "tab:blue", "HF PEFT": "tab:orange", "AdapterHub": "tab:green"}
FULL = "Full fine-tuning"
PROMPT = "Prompt tuning"
NOT_ADAPTER_STYLE = (FULL, PROMPT)        # the goal's "adapter-style methods": all but these (and >= 1 %)
BUDGET_PERCENT, GAP_POINTS = 1.0, 1.0
MAIN = "quality_peers"
# the CPU mode's file shows these in goal 2 (after the first: its cause checks)
GAP_FILES = ("quality_peers_gap", "quality_peers_gap_adapterhub", "quality_peers_gap_long")
MORE_SEEDS = "quality_peers_more_seeds"     # more seeds of some cpu-mode methods: goal 1 over all of them
# checks of the cause of goal 2's gap at the second budget, each the gap mode with one thing changed
CAUSE_CHECKS = {"quality_peers_gap_lr1e-3": "learning rate 1e-3 (not 3e-3)",
                "quality_peers_gap_pooler": "BERT's pooler trained too",
                "quality_peers_gap_lora_all": "LoRA on every linear layer, r = 4",
                "quality_peers_gap_wide": "twice the bottleneck (k = 24)"}
STANDS_FOR = {"LoRA (r=4, α=8, all linear)": "LoRA (r=8, α=16, q, v)",     # a check's method -> its table row
              "Pfeiffer (k=24)": "Pfeiffer (k=12)", "Parallel (k=24, s=4)": "Parallel (k=12, s=4)"}


def scores(runs: list[dict]) -> dict:
    """{task: {method: {library: {seed: accuracy}}}} of the runs that finished, in run-table order."""
    out: dict = {}
    for r in runs:
        if "error" not in r:
            out.setdefault(r["task"], {}).setdefault(r["method"], {}).setdefault(r["library"], {})[r["seed"]] = \
                r["accuracy"]
    return out


def _mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(by_seed: dict | None) -> str:
    if not by_seed:
        return "–"
    mean, std = _mean_std(by_seed.values())
    return f"{mean:.1f} ± {std:.1f}" if len(by_seed) > 1 else f"{mean:.1f}"


def versus_best_peer(per_library: dict) -> dict | None:
    """peftlab − the peer with the higher mean: the mean and std of the per-seed differences (the seeds
    share data order and head init, so they pair), and the goal: peftlab's mean no lower than the
    peer's by more than the larger of the two seed stds."""
    ours = per_library.get("peftlab")
    peers = {lib: v for lib, v in per_library.items() if lib != "peftlab" and v}
    if not ours or not peers:
        return None
    best = max(peers, key=lambda lib: statistics.mean(peers[lib].values()))
    common = sorted(set(ours) & set(peers[best]))
    diffs = [ours[s] - peers[best][s] for s in common]
    (m_ours, s_ours), (m_peer, s_peer) = _mean_std(ours.values()), _mean_std(peers[best].values())
    return {"peer": best, "diff": statistics.mean(diffs) if diffs else m_ours - m_peer,
            "spread": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            "tolerance": max(s_ours, s_peer), "holds": m_ours >= m_peer - max(s_ours, s_peer)}


def _percents(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        if "percent" in r:
            out.setdefault((r["task"], r["method"]), set()).add(round(r["percent"], 3))
    return out


def _libraries(task: str, meta: dict) -> list[str]:
    only = meta.get("only", {}).get(task, {}).get("libraries")
    return [lib for lib in meta["libraries"] if not only or lib in only]


def task_table(task: str, runs: list[dict], meta: dict) -> list[str]:
    table = scores(runs).get(task, {})
    percents = _percents(runs)
    errors = {(r["method"], r["library"]): r["error"] for r in runs if r["task"] == task and "error" in r}
    libraries = _libraries(task, meta)
    peers = len(libraries) > 1
    tail = " | peftlab − best peer | goal |" if peers else " |"
    lines = ["| method | trainable % | " + " | ".join(libraries) + tail,
             "|---" * (len(libraries) + (4 if peers else 2)) + "|"]
    for method in _method_order(runs):
        per_library = table.get(method, {})
        if not per_library and not any(k[0] == method for k in errors):
            continue
        cells = [("n/a¹" if (method, lib) in errors else _cell(per_library.get(lib))) for lib in libraries]
        check = versus_best_peer(per_library)
        delta = f"{check['diff']:+.1f} ± {check['spread']:.1f} (vs {check['peer']})" if check else "–"
        goal = ("yes" if check["holds"] else f"**no** (tolerance {check['tolerance']:.1f})") if check else "–"
        pct = "/".join(f"{p:.3f}" for p in sorted(percents.get((task, method), []))) or "–"
        lines.append(f"| {method} | {pct} | " + " | ".join(cells) + (f" | {delta} | {goal} |" if peers else " |"))
    return lines


def _method_order(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in runs))


def headline(payload: dict) -> str:
    """One line for the README: goal 1 over every method x task with a peer, and the spread of peftlab −
    best peer."""
    meta, table = payload["meta"], scores(payload["runs"])
    checks = [(key, method, versus_best_peer(per_library)) for key in meta["budgets"]
              for method, per_library in table.get(key, {}).items()]
    checks = [(k, m, c) for k, m, c in checks if c]
    if not checks:
        return "No method has both peftlab and a peer result yet."
    held = sum(c["holds"] for _, _, c in checks)
    worst = min(checks, key=lambda x: x[2]["diff"])
    diffs = [c["diff"] for _, _, c in checks]
    return (f"peftlab − best peer over {len(checks)} method × task pairs: from {min(diffs):+.1f} to "
            f"{max(diffs):+.1f} points (mean {statistics.mean(diffs):+.1f}); within the seed-std tolerance in "
            f"{held} of {len(checks)} (lowest: {worst[1]} on {worst[0]}, {worst[2]['diff']:+.1f} ± "
            f"{worst[2]['spread']:.1f} vs {worst[2]['peer']}).")


def adapter_gap(runs: list[dict], task: str) -> list[str]:
    """Goal 2: methods under 1 % trainable (not prompts) against the same library's full fine-tuning."""
    table, percents = scores(runs).get(task, {}), _percents(runs)
    full = table.get(FULL, {})
    lines = ["| method | library | trainable % | accuracy | full FT | gap | within 1 point |",
             "|---|---|---|---|---|---|---|"]
    for method, per_library in table.items():
        pct = max(percents.get((task, method), {100.0}))
        if method in NOT_ADAPTER_STYLE or pct >= BUDGET_PERCENT:
            continue
        for lib, by_seed in per_library.items():
            if lib not in full:
                continue
            gap = statistics.mean(by_seed.values()) - statistics.mean(full[lib].values())
            lines.append(f"| {method} | {lib} | {pct:.3f} | {_cell(by_seed)} | {_cell(full[lib])} | {gap:+.1f} | "
                         f"{'yes' if gap >= -GAP_POINTS else 'no'} |")
    return lines


def chance_margin(stats: dict) -> float:
    """The 95 % binomial half-width, in points, of one run's accuracy at the majority rate on the test rows."""
    p = stats["majority"] / 100
    return 100 * 1.96 * (p * (1 - p) / stats["test_rows"]) ** 0.5


def below_learning(task: str, runs: list[dict], meta: dict) -> list[str]:
    """A warning when no library's full fine-tuning is clearly above the majority class on a task: the
    budget is too short for the task, and its table compares chance-level numbers."""
    full = scores(runs).get(task, {}).get(FULL, {})
    majority, needed = meta["data"][task]["majority"], chance_margin(meta["data"][task])
    if not full or any(statistics.mean(v.values()) > majority + needed for v in full.values()):
        return []
    best = max(statistics.mean(v.values()) for v in full.values())
    return [f"**At this budget no library's full fine-tuning is clearly above the majority class** (best "
            f"{best:.1f} against {majority:.1f} + {needed:.1f} on {meta['data'][task]['test_rows']} test rows): "
            "every number here is near chance, so this table tells neither a method's quality nor a "
            "difference between libraries (those are chance-level too).", ""]


def prompt_check(runs: list[dict], meta: dict) -> list[str]:
    """Goal 3: prompt tuning clearly above the majority class: the mean above majority + the 95 %
    binomial half-width of one run's accuracy on that many test rows, and every seed above majority."""
    lines = ["| task | library | prompt tuning | majority class | margin needed | clearly above |",
             "|---|---|---|---|---|---|"]
    for task, per_method in scores(runs).items():
        majority, needed = meta["data"][task]["majority"], chance_margin(meta["data"][task])
        for lib, by_seed in per_method.get(PROMPT, {}).items():
            mean = statistics.mean(by_seed.values())
            above = mean > majority + needed and min(by_seed.values()) > majority
            lines.append(f"| {task} | {lib} | {_cell(by_seed)} | {majority:.1f} | +{needed:.1f} | "
                         f"{'yes' if above else 'no'} |")
    return lines


def mapping_table(meta: dict) -> list[str]:
    lines = ["| method | lr | peftlab | HF PEFT | AdapterHub |", "|---|---|---|---|---|"]
    notes = []
    for label, spec in meta["methods"].items():
        cells = [_config_text(spec["configs"].get(lib)) for lib in LIBRARIES]
        lines.append(f"| {label} | {spec['lr']:g} | " + " | ".join(cells) + " |")
        notes += [f"- **{label}**: {note}" for note in spec["notes"]]
    return lines + [""] + notes


def _config_text(config: dict | None) -> str:
    if config is None:
        return "(no such method)"
    if "method" in config:
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k not in ("method", "init_token_ids"))
        ids = ", init_token_ids=<the init text's ids>" if "init_token_ids" in config else ""
        return f"`{config['method']}` {args}{ids}".strip()
    if config["class"] is None:
        return "bare model, all trained"
    args = ", ".join(f"{k}={v!r}" for k, v in config["kwargs"].items() if k != "tokenizer_name_or_path")
    return f"`{config['class']}({args})`".replace("|", "\\|")


def budget_table(meta: dict) -> list[str]:
    lines = ["| task | train rows | epochs | steps | max tokens | tokens/row (padded) | test rows | majority % |",
             "|---|---|---|---|---|---|---|---|"]
    for task, b in meta["budgets"].items():
        s = meta["data"][task]
        lines.append(f"| {task} | {s['train_rows']:,} | {b['epochs']:g} | {s['steps']} (batch {b['batch_size']}) | "
                     f"{b['max_length']} | {s['mean_tokens']:.1f} ({s['padded_tokens_per_row']:.1f}) | "
                     f"{s['test_rows']} | {s['majority']:.1f} |")
    return lines


def speed_table(runs: list[dict], meta: dict) -> list[str]:
    per: dict = {}
    for r in runs:
        if "error" not in r:
            per.setdefault((r["task"], r["method"], r["library"]), []).append(r["s_per_step"])
    lines = ["| task | method | " + " | ".join(f"{lib} s/step" for lib in meta["libraries"]) + " |",
             "|---" * (len(meta["libraries"]) + 2) + "|"]
    for task in meta["budgets"]:
        for method in _method_order(runs):
            cells = [f"{statistics.mean(per[(task, method, lib)]):.3f}" if (task, method, lib) in per else "–"
                     for lib in meta["libraries"]]
            if any(c != "–" for c in cells):
                lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    return lines


def budget_title(key: str, meta: dict) -> str:
    task, stats = meta.get("glue_task", {}).get(key, key), meta["data"][key]
    only = meta.get("only", {}).get(key)
    ran = [lib for lib in only["libraries"] if lib in meta.get("libraries", only["libraries"])] if only else []
    extra = f"; a longer budget, {', '.join(ran)} only" if only else ""
    return f"{task} ({stats['train_rows']:,} rows, {stats['steps']:,} steps{extra})"


def more_seeds(payload: dict, extra: dict) -> list[str]:
    """Goal 1 for the methods of `extra` over the seeds of both runs (same budget and data), with Welch's
    t-test of the two libraries' means."""
    from scipy.stats import ttest_ind
    methods = set(r["method"] for r in extra["runs"])
    runs = [r for r in payload["runs"] if r["method"] in methods] + extra["runs"]
    seeds = sorted({r["seed"] for r in runs})
    out = [f"More seeds (`{MORE_SEEDS}.md`, {extra['meta']['wall_min']:.0f} min): seeds {seeds[0]}–{seeds[-1]} "
           f"({len(seeds)}), the cpu mode's budget:", ""]
    for key in extra["meta"]["budgets"]:        # the tasks the extra seeds ran (the CPU mode's SST-2)
        out += task_table(key, runs, payload["meta"]) + [""]
        for method, per_library in scores(runs).get(key, {}).items():
            check = versus_best_peer(per_library)
            if check:
                test = ttest_ind(list(per_library["peftlab"].values()), list(per_library[check["peer"]].values()),
                                 equal_var=False)
                out.append(f"- {method}: peftlab vs {check['peer']}, Welch's t = {test.statistic:.2f}, "
                           f"p = {test.pvalue:.2f}")
    return out + [""]


def cause_checks(baseline: dict, checks: dict) -> list[str]:
    """The second budget's peftlab accuracies beside the same runs with one thing changed (CAUSE_CHECKS),
    and full fine-tuning's: does the change close the gap?"""
    if not checks:
        return []
    key = next(iter(baseline["meta"]["budgets"]))
    base = scores(baseline["runs"]).get(key, {})
    changed = {label: {STANDS_FOR.get(m, m): v for m, v in scores(part["runs"]).get(key, {}).items()}
               for label, part in checks.items()}
    full = base.get("Full fine-tuning", {}).get("peftlab")
    if not full:
        return []
    out = [f"Checks of the gap's cause at this budget, one change each (`{'`, `'.join(c + '.md' for c in CAUSE_CHECKS)}`); "
           f"full fine-tuning {_cell(full)}:", "",
           "| method | as run | " + " | ".join(CAUSE_CHECKS[c] for c in checks) + " |",
           "|---" * (2 + len(checks)) + "|"]
    for method in [m for m in base if any(m in table for table in changed.values())]:
        cells = [_cell(table[method]["peftlab"]) + f" ({_mean(table[method]['peftlab']) - _mean(full):+.1f})"
                 if method in table else "–" for table in changed.values()]
        own = base[method]["peftlab"]
        out.append(f"| {method} | {_cell(own)} ({_mean(own) - _mean(full):+.1f}) | " + " | ".join(cells) + " |")
    return out + [""]


def _mean(by_seed: dict) -> float:
    return statistics.mean(by_seed.values())


def to_markdown(payload: dict, png: str, gaps: dict | None = None, extra: dict | None = None,
                checks: dict | None = None) -> str:
    """`gaps`: {file stem: payload} of the longer budgets, shown in goal 2; `extra`: more seeds (goal 1)."""
    meta, runs = payload["meta"], payload["runs"]
    errors = sorted({(r["library"], r["method"], r["error"]) for r in runs if "error" in r})
    done = sum(1 for r in runs if "error" not in r)
    estimate = (f" (estimated beforehand from timed steps: {meta['estimate_min']:.0f} min)"
                if meta.get("estimate_min") else "")
    out = [f"# Quality side by side with the peers ({meta['mode']} mode)", "",
           f"{meta['model']} with a classification head; the same rows, token ids, classifier init, batches, "
           f"optimizer, schedule, learning rate, batch size and steps for every library; seeds "
           f"{', '.join(map(str, meta['seeds']))}; accuracy on the test rows after the last step (no model "
           f"selection). How it is run: `docs/benchmarks_quality.md` (Peers).", "",
           f"**Measured run time: {meta['wall_min']:.1f} min**{estimate}, {done} runs"
           f"{' (partial: still running or stopped)' if meta['partial'] else ''}; {meta['machine']}; "
           f"torch {meta['torch']}, {_versions(runs)}.", ""]
    out += [f"**Headline**: {headline(payload)}", ""]
    if meta.get("train_pooler"):
        out += ["**`--train-pooler`: BERT's pooler (147,840 parameters on MiniLM, counted in trainable %) trains "
                "with every method, at the method's learning rate.**", ""]
    if meta.get("lr_override"):
        out += [f"**`--lr {meta['lr_override']:g}`: every method at this learning rate, not its own.**", ""]
    if meta.get("skipped"):
        out += [f"Skipped: {', '.join(f'{k} ({v})' for k, v in meta['skipped'].items())}.", ""]
    out += ["## Budget", ""] + budget_table(meta) + [
            "", f"Optimizer: {meta['optimizer']}. Schedule: {meta['schedule']}. "
            "Batches: length-grouped (each epoch a seeded permutation cut into 50-batch chunks sorted by "
            "length, batches shuffled), the same for every library.", ""]
    at_chance = {key: below_learning(key, runs, meta) for key in meta["budgets"]}
    for key in meta["budgets"]:
        out += [f"## {budget_title(key, meta)}: test accuracy, mean ± std over seeds", ""]
        out += task_table(key, runs, meta) + [""] + at_chance[key]
    if errors:
        out += ["¹ Not available:"] + [f"- {lib}, {method}: `{error}`" for lib, method, error in errors] + [""]
    out += [f"![accuracy per seed]({png})", "", "## Goals", "",
            "1. peftlab's mean no lower than the best peer's by more than the larger seed std: the *goal* "
            "column above.", ""]
    out += more_seeds(payload, extra) if extra else []
    out += ["2. Adapter-style methods under 1 % trainable within 1 point of the same "
            "library's full fine-tuning on SST-2, at each budget:", ""]
    for stem, part in [(None, payload), *(gaps or {}).items()]:
        for key in [k for k in part["meta"]["budgets"] if part["meta"].get("glue_task", {}).get(k, k) == "sst2"]:
            source = "" if stem is None else f" (`{stem}.md`, {part['meta']['wall_min']:.0f} min)"
            out += [f"{budget_title(key, part['meta'])}{source}:", ""] + adapter_gap(part["runs"], key) + [""]
        if stem == GAP_FILES[0]:
            out += cause_checks(part, checks or {})
    out += ["3. Prompt tuning clearly above the majority class:", ""] + prompt_check(runs, meta) + [""]
    chance = [key for key, flagged in at_chance.items() if flagged]
    if chance:
        out += [f"Where full fine-tuning itself stays at chance ({', '.join(chance)}: flagged above), prompt "
                "tuning cannot show learning at this budget; the goal is read where it learns.", ""]
    out += ["## Method mapping", ""] + mapping_table(meta) + [""]
    out += ["Prompt-tuning init text per task: " + "; ".join(f"{t}: \"{s}\"" for t, s in meta["prompt_text"].items()),
            "", "## Time per training step (mean over seeds)", ""] + speed_table(runs, meta) + [""]
    return "\n".join(out)


def _versions(runs: list[dict]) -> str:
    seen = {}
    for r in runs:
        for key in ("transformers", "peft", "adapters"):
            if r.get(key):
                seen.setdefault(key, set()).add(r[key])
    return ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in seen.items())


def plot(payload: dict, path: Path) -> None:
    """A dot per seed, a row per method, a colour per library; one panel per task, majority class dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    meta, table = payload["meta"], scores(payload["runs"])
    tasks = [t for t in meta["budgets"] if t in table]
    if not tasks:
        return
    methods = _method_order(payload["runs"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 0.45 * len(methods) + 1.6), sharey=True,
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row, method in enumerate(methods):
            for k, lib in enumerate(meta["libraries"]):
                values = list(table[task].get(method, {}).get(lib, {}).values())
                y = row + (k - 1) * 0.22
                ax.scatter(values, [y] * len(values), s=18, color=COLOURS.get(lib, "grey"), label=lib)
        ax.axvline(meta["data"][task]["majority"], ls="--", color="grey", lw=0.8)
        ax.set_title(f"{task}: test accuracy (dashed: majority class)", fontsize=10)
        ax.set_yticks(range(len(methods)), methods)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()     # the axes share y: inverting each would undo it; the first method on top
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(folder: Path, name: str, payload: dict, show: bool = False) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2))
    if name != MAIN:
        (folder / f"{name}.md").write_text(to_markdown(payload, f"{name}.png"))
    plot(payload, folder / f"{name}.png")
    if (name == MAIN or name in (*GAP_FILES, MORE_SEEDS, *CAUSE_CHECKS)) and (folder / f"{MAIN}.json").exists():
        main = _read(folder / f"{MAIN}.json")     # the main file shows these runs too
        checks = {c: _read(folder / f"{c}.json") for c in CAUSE_CHECKS if (folder / f"{c}.json").exists()}
        (folder / f"{MAIN}.md").write_text(to_markdown(main, f"{MAIN}.png", _gaps(folder),
                                                       _read(folder / f"{MORE_SEEDS}.json"), checks))
    if show:
        print((folder / f"{name}.md").read_text())


def _gaps(folder: Path) -> dict:
    return {stem: _read(folder / f"{stem}.json") for stem in GAP_FILES if (folder / f"{stem}.json").exists()}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
