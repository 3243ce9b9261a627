"""Quality on real data with the offline pretrained models (DESIGN §5), in the form of the Compacter
paper's Table 1: trainable %, per-task test metric, average, mean ± std over seeds.

    .venv/bin/python benchmarks/quality.py --quick            # ≤ 20 minutes on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --mode medium      # SST-2 with more steps, whole test split
    .venv/bin/python benchmarks/quality.py --mode full        # all data, 3 seeds (days on a CPU)
    .venv/bin/python benchmarks/quality.py --quick --part e2e # SmolLM2-135M on E2E only
    .venv/bin/python benchmarks/quality.py --device cuda      # the GPU mode: 5 tasks, every method, 3 seeds, bf16
    .venv/bin/python benchmarks/quality.py --smoke            # the GPU mode's code path on the CPU, tiny model

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
from quality_runner import E2E_METHODS, GLUE_METHODS, SOURCE_METHOD, TRANSFER, Budget, run_e2e, run_glue

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
    parallel: bool = False      # worker processes (quality_parallel.py) and the CUDA checks first
    device: str = "cpu"
    slots: int = 1              # worker processes at once (parallel modes)
    precision: str = "fp32"     # bf16: autocast, float32 weights and optimizer state
    max_minutes: float | None = None    # no chunk starts after this (the GPU lease's budget)
    smoke: bool = False


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
    # One H200 (docs/benchmarks_quality.md, "GPU mode"): the five tasks, every method, 3 seeds, bf16, batch 32,
    # 12 worker processes sharing the GPU. SST-2 12,000 rows (375 steps), CoLA 1 epoch (268), STS-B 2
    # (360), MRPC 3 (345), RTE 4 (312): 1,660 steps per method and seed, 84,660 in all; E2E as in full.
    # Sized to finish in under 8 minutes from an assumed ~4 ms of GPU per step; not measured (no GPU was
    # lent), so no chunk starts after 8 minutes and a cut run says so.
    "cuda": Mode(tasks={"sst2": Budget(train=12000, batch_size=32), "cola": Budget(epochs=1, batch_size=32),
                        "stsb": Budget(epochs=2, batch_size=32, max_length=128),
                        "mrpc": Budget(epochs=3, batch_size=32, max_length=128),
                        "rte": Budget(epochs=4, batch_size=32, max_length=128)},
                 seeds=(42, 43, 44), e2e=Budget(train=10000, epochs=1, batch_size=8), parallel=True,
                 device="cuda", slots=12, precision="bf16", max_minutes=8.0),
    # The GPU mode's code path on the CPU in CI time: a tiny random BERT (MiniLM's vocabulary and width,
    # 3 layers), two steps per run, two workers, bf16 CPU autocast; three tasks (a regression one too).
    "smoke": Mode(tasks={t: Budget(train=32, steps=2, test=16, batch_size=8) for t in ("sst2", "stsb", "rte")},
                  seeds=(42,), parallel=True, slots=2, precision="bf16", smoke=True),
}
TRAIN_ROWS = {"sst2": 66349, "cola": 8551, "stsb": 5749, "mrpc": 3668, "rte": 2490}   # after the §5 split


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="same as --mode quick")
    parser.add_argument("--smoke", action="store_true", help="same as --mode smoke")
    parser.add_argument("--mode", choices=list(MODES), default=None, help="default: full, or cuda with --device cuda")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--slots", type=int, default=None, help="worker processes at once (parallel modes)")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no run after this many minutes")
    parser.add_argument("--model", default="minilm", help="the GLUE model: minilm or a local folder")
    parser.add_argument("--results-dir", default=str(RESULTS))
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
    args.mode = "quick" if args.quick else "smoke" if args.smoke else args.mode or (
        "cuda" if args.device == "cuda" else "full")
    if args.device == "cuda" and not MODES[args.mode].parallel:
        parser.error(f"--device cuda runs the parallel modes (cuda, smoke), not --mode {args.mode}")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = Path(args.results_dir)
    if args.rewrite:
        payload = json.loads((results / f"{args.rewrite}.json").read_text())
        return write_results(results, args.rewrite, payload["glue_runs"], payload["e2e_runs"], payload["meta"])
    mode = MODES[args.mode]
    quality_runner.TRAIN_POOLER = args.train_pooler
    if args.tasks:
        mode.tasks = {t: b for t, b in mode.tasks.items() if t in args.tasks}
    start = time.time()
    name = args.name or f"quality_{args.mode}" + ("" if args.part == "all" else f"_{args.part}")
    work = Path(args.work) / args.mode
    if mode.parallel:
        return run_parallel(args, mode, name, work, results, start)

    def meta(partial=False):
        return _meta(args, mode, start, glue_min, partial)
    glue_min = 0.0
    common = dict(data_dir=args.data_dir, work=work, threads=args.threads)
    glue_runs = e2e_runs = []
    if args.part in ("all", "glue"):
        methods = args.methods or list(GLUE_METHODS)
        sources = {} if args.no_transfer else {**mode.tasks, **mode.source_tasks}
        glue_runs = run_glue(mode.tasks, sources, methods, mode.seeds, **common,
                             on_record=lambda runs: write_results(results, name, runs, [], meta(partial=True)))
    glue_min = (time.time() - start) / 60
    if args.part in ("all", "e2e"):
        e2e_runs = run_e2e(mode.e2e, **common,
                           on_record=lambda runs: write_results(results, name, glue_runs, runs, meta(partial=True)))
    write_results(results, name, glue_runs, e2e_runs, meta(), show=True)


def run_parallel(args, mode: Mode, name: str, work: Path, results: Path, start: float) -> dict:
    """The GPU mode and its smoke run: the CUDA checks, then every run on worker processes
    (quality_parallel.py); failed runs are listed in the results, not dropped."""
    import cuda_checks
    import quality_parallel as parallel
    if mode.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device here")
    work.mkdir(parents=True, exist_ok=True)
    model = _parallel_model(args, mode, work)
    check_budget = next(iter(mode.tasks.values())) if mode.smoke else quality_runner.Budget(
        train=4000, batch_size=32)
    checks = cuda_checks.run_checks(mode.device, model, args.data_dir, work / "checks", check_budget,
                                    learn=not mode.smoke)
    cuda_checks.write(results, f"{name}_checks", checks)
    settings = dict(data_dir=args.data_dir, work=str(work), threads=args.threads, model=model,
                    precision=mode.precision, device=mode.device, train_rows=TRAIN_ROWS,
                    train_pooler=args.train_pooler)
    phases = [[], []]
    if args.part in ("all", "glue"):
        phases = list(parallel.glue_jobs(mode.tasks, args.methods or [*GLUE_METHODS, *TRANSFER], mode.seeds,
                                         not args.no_transfer, settings, by="task" if mode.smoke else "method"))
    if args.part in ("all", "e2e") and not mode.smoke:
        phases[0] += parallel.e2e_jobs(mode.e2e, dict(settings, model=quality_runner.local_smollm2(work)))
    minutes = args.max_minutes or mode.max_minutes
    deadline = start + 60 * minutes if minutes else None

    def write(records, final=False):
        done = [r for r in records if "error" not in r]
        meta = dict(_meta(args, mode, start, 0.0, partial=not final), checks_ok=checks["ok"], model=model,
                    errors=[r for r in records if "error" in r],
                    planned_runs=sum(len(c) for phase in phases for c in phase), runs_done=len(done))
        write_results(results, name, [r for r in done if r["task"] != "e2e"], [r for r in done if r["task"] == "e2e"],
                      meta, show=final)
    records = parallel.run_phases(phases, work, args.slots or mode.slots, args.threads, deadline, on_record=write)
    write(records, final=True)
    return {"checks": checks, "records": records}


def _parallel_model(args, mode: Mode, work: Path) -> str:
    """The GLUE model: the smoke run's tiny random BERT (MiniLM's vocabulary and width), else --model."""
    if not mode.smoke:
        return args.model
    import transformers as tf
    from peftlab.models import offline_path
    from quality_peers_data import tiny_model
    tokenizer = tf.AutoTokenizer.from_pretrained(str(offline_path("minilm")))
    return tiny_model(work / "tiny-bert-h384", tokenizer, hidden=384, layers=3)


def _meta(args, mode: Mode, start: float, glue_min: float, partial: bool) -> dict:
    import torch
    return {"mode": args.mode, "part": args.part, "partial": partial, "settings": _settings(mode),
            "wall_min": (time.time() - start) / 60, "glue_min": glue_min or (time.time() - start) / 60,
            "threads": args.threads, "torch": torch.__version__, "train_pooler": args.train_pooler,
            "machine": _machine(mode, args.threads) + (f", {args.note}" if args.note else ""),
            "device": mode.device, "precision": mode.precision}


def _machine(mode: Mode, threads: int) -> str:
    import platform
    import torch
    cpu = f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} torch thread(s)"
    if mode.device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, {mode.slots} worker processes; {cpu} each"
    return cpu + (f", {mode.slots} worker processes" if mode.parallel else "")


def _settings(mode: Mode) -> dict:
    out = asdict(mode)
    out["glue_methods"] = {label: {"config": cfg, "lr": lr} for label, (cfg, lr) in GLUE_METHODS.items()}
    out["e2e_methods"] = {label: {"config": cfg, "lr": lr} for label, (cfg, lr) in E2E_METHODS.items()}
    out["source_method"] = SOURCE_METHOD
    return out


def write_results(results: Path, name: str, glue_runs: list, e2e_runs: list, meta: dict, show: bool = False) -> None:
    from quality_report import plot, to_markdown
    results.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "glue_runs": glue_runs, "e2e_runs": e2e_runs}
    (results / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (results / f"{name}.md").write_text(to_markdown(payload, png=f"{name}.png"))
    if glue_runs:
        plot(payload, results / f"{name}.png")
    if show:
        print((results / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
