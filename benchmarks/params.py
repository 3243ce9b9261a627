"""The Compacter paper's parameter column (Table 1, T5-base) next to peftlab's counts, from configs alone
(models built on the meta device, so this takes seconds). Writes benchmarks/results/params.md.

    .venv/bin/python benchmarks/params.py [--model t5-base]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from peftlab.params_table import count, paper_rows
from peftlab.registry import config_from_dict

RESULTS = Path(__file__).parent / "results"


def table(model: str) -> str:
    lines = [f"# Trainable parameters on {model}", "",
             "| method | config | peftlab | % of base | paper | match |", "|---|---|---|---|---|---|"]
    base = None
    for row in paper_rows(model):
        config = config_from_dict(row["config"])
        trainable, base = count(model, config)
        paper = row.get("paper_count")
        paper_text = f"{paper:,} ({row['paper_percent']:.3f} %)" if paper else f"≈ {row.get('paper_percent', '')} %"
        code = row.get("code_count")   # the reference code's own count, where the paper gives a round budget
        if code is not None:
            match = "exact (the reference code's count)" if code == trainable else f"NO (code: {code:,})"
        else:
            match = "—" if paper is None else ("exact" if paper == trainable else
                                               ("within 1 %" if abs(trainable - paper) < 0.01 * paper else "NO"))
        shown = ", ".join(f"{k}={v}" for k, v in row["config"].items() if k != "method")
        lines.append(f"| {row['label']} | `{config.method}` {shown} | {trainable:,} | {100 * trainable / base:.3f} | "
                     f"{paper_text} | {match} |")
    lines += ["", f"Base model: {base:,} parameters (percentages are of the base)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", help="preset with a paper table (default: t5-base, gpt2)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = "\n".join(table(m) for m in (args.model or ["t5-base", "gpt2"]))
    (RESULTS / "params.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
