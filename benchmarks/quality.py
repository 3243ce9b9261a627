"""Quality on real data with the offline pretrained models (DESIGN §5), in the form of the Compacter
paper's Table 1: trainable %, per-task test metric, average, mean ± std over seeds.

    .venv/bin/python benchmarks/quality.py --quick            # ≤ 20 minutes on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --mode medium      # SST-2 with more steps, whole test split
    .venv/bin/python benchmarks/quality.py --mode full        # all data, 3 seeds (days on a CPU)
    .venv/bin/python benchmarks/quality.py --quick --part e2e # SmolLM2-135M on E2E only

GLUE part: MiniLM (all-MiniLM-L6-v2) with a classification/regression head on CoLA, SST-2, MRPC,
STS-B, RTE from ../shared/data (or --data-dir). SPoT and ATTEMPT use prompt-tuning runs on the *other*
tasks as their sources. E2E part: SmolLM2-135M (causal LM) with LoRA, prefix tuning, inducer-tuning and
Pfeiffer at a matched ≈ 1.6 % budget; BLEU and ROUGE-L on the dev set. Each mode's data subsets and
step counts are in MODES below and are printed into the results. Writes benchmarks/results/quality*.md
(+ .json, .png); docs/benchmarks_quality.md explains the choices.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import quality_runner  # its TRAIN_POOLER switch
from quality_runner import E2E_METHODS, GLUE_METHODS, SOURCE_METHOD, Budget, run_e2e, run_glue

HERE = Path(__file__).parent
RESULTS = HERE / "results"
GLUE = ["cola", "sst2", "mrpc", "stsb", "rte"]


@dataclass
class Mode:
    """What one mode trains. `tasks` are the table's columns; `source_tasks` are trained with the
    source method only, to give SPoT and ATTEMPT sources beyond the table's tasks."""
    tasks: dict[str, Budget]
    source_tasks: dict[str, Budget] = field(default_factory=dict)
    seeds: tuple[int, ...] = (42,)
    e2e: Budget = field(default_factory=Budget)


# Budgets: `train` = the first N training rows (file order, after the DESIGN §5 split), `steps` =
# optimizer steps at the batch size (None: `epochs` over the subset), `test` = the first N test rows.
MODES = {
    # Quick (≤ 20 min on one core of a shared 2-core VM): SST-2, the task MiniLM learns fastest, for
    # every method; 20-step prompt-tuning runs on MRPC and STS-B as SPoT / ATTEMPT sources; E2E with 8
    # steps per method and a 40-MR slice of the dev set.
    "quick": Mode(tasks={"sst2": Budget(train=3000, steps=60, test=500)},
                  source_tasks={"mrpc": Budget(train=1000, steps=20, test=50),
                                "stsb": Budget(train=1000, steps=20, test=50)},
                  e2e=Budget(train=2000, steps=8, test=40, batch_size=8)),
    # Medium (about 35 min on one core): SST-2 again with more data and steps and the whole test split
    # (872 rows), every method, the same sources as quick; E2E with 24 steps (3× quick) and 60 MRs.
    # A medium run on STS-B with 100 steps did not learn (see docs/benchmarks_quality.md).
    "medium": Mode(tasks={"sst2": Budget(train=10000, steps=100)},
                   source_tasks={"mrpc": Budget(train=1000, steps=20, test=50),
                                 "stsb": Budget(train=1000, steps=20, test=50)},
                   e2e=Budget(train=5000, steps=24, test=60, batch_size=8)),
    # Full: every training row, 3 epochs on SST-2 and 20 on the four small tasks, 3 seeds; E2E on a
    # 10K-row training subset for one epoch, the full dev set (547 MRs).
    "full": Mode(tasks={"sst2": Budget(epochs=3), "mrpc": Budget(epochs=20), "stsb": Budget(epochs=20),
                        "rte": Budget(epochs=20), "cola": Budget(epochs=20)},
                 seeds=(42, 43, 44), e2e=Budget(train=10000, epochs=1, batch_size=8)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="same as --mode quick")
    parser.add_argument("--mode", choices=list(MODES), default="full")
    parser.add_argument("--part", choices=["all", "glue", "e2e"], default="all")
    parser.add_argument("--methods", nargs="*", default=None, help=f"GLUE methods (default: all): {list(GLUE_METHODS)}")
    parser.add_argument("--tasks", nargs="*", choices=GLUE, help="restrict the mode's GLUE tasks")
    parser.add_argument("--no-transfer", action="store_true", help="skip SPoT and ATTEMPT (and their sources)")
    parser.add_argument("--train-pooler", action="store_true",
                        help="train BERT's pooler with every method's head (the head check in results/quality.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(HERE.parent / "runs" / "quality"))
    parser.add_argument("--name", default=None, help="results file stem (default: quality_<mode>[_<part>])")
    parser.add_argument("--note", default="", help="about the machine, for the results (e.g. 'shared, nice 5')")
    parser.add_argument("--rewrite", metavar="NAME", help="only rewrite results/NAME.md and .png from NAME.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.mode = "quick"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.rewrite:
        payload = json.loads((RESULTS / f"{args.rewrite}.json").read_text())
        return write_results(args.rewrite, payload["glue_runs"], payload["e2e_runs"], payload["meta"])
    mode = MODES[args.mode]
    quality_runner.TRAIN_POOLER = args.train_pooler
    if args.tasks:
        mode.tasks = {t: b for t, b in mode.tasks.items() if t in args.tasks}
    start = time.time()
    name = args.name or f"quality_{args.mode}" + ("" if args.part == "all" else f"_{args.part}")

    def meta(partial=False):
        return _meta(args, mode, start, glue_min, partial)
    glue_min = 0.0
    work = Path(args.work) / args.mode
    common = dict(data_dir=args.data_dir, work=work, threads=args.threads)
    glue_runs = e2e_runs = []
    if args.part in ("all", "glue"):
        methods = args.methods or list(GLUE_METHODS)
        sources = {} if args.no_transfer else {**mode.tasks, **mode.source_tasks}
        glue_runs = run_glue(mode.tasks, sources, methods, mode.seeds, **common,
                             on_record=lambda runs: write_results(name, runs, [], meta(partial=True)))
    glue_min = (time.time() - start) / 60
    if args.part in ("all", "e2e"):
        e2e_runs = run_e2e(mode.e2e, **common,
                           on_record=lambda runs: write_results(name, glue_runs, runs, meta(partial=True)))
    write_results(name, glue_runs, e2e_runs, meta(), show=True)


def _meta(args, mode: Mode, start: float, glue_min: float, partial: bool) -> dict:
    import platform
    import torch
    return {"mode": args.mode, "part": args.part, "partial": partial, "settings": _settings(mode),
            "wall_min": (time.time() - start) / 60, "glue_min": glue_min or (time.time() - start) / 60,
            "threads": args.threads, "torch": torch.__version__, "train_pooler": args.train_pooler,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s)"
                       + (f", {args.note}" if args.note else "")}


def _settings(mode: Mode) -> dict:
    out = asdict(mode)
    out["glue_methods"] = {label: {"config": cfg, "lr": lr} for label, (cfg, lr) in GLUE_METHODS.items()}
    out["e2e_methods"] = {label: {"config": cfg, "lr": lr} for label, (cfg, lr) in E2E_METHODS.items()}
    out["source_method"] = SOURCE_METHOD
    return out


def write_results(name: str, glue_runs: list, e2e_runs: list, meta: dict, show: bool = False) -> None:
    from quality_report import plot, to_markdown
    RESULTS.mkdir(exist_ok=True)
    payload = {"meta": meta, "glue_runs": glue_runs, "e2e_runs": e2e_runs}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(to_markdown(payload, png=f"{name}.png"))
    if glue_runs:
        plot(payload, RESULTS / f"{name}.png")
    if show:
        print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
