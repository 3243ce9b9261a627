"""Quality side by side with the peers (issue #22): the same method trained by peftlab, HF PEFT and
AdapterHub on the same real data — MiniLM (all-MiniLM-L6-v2, offline) on SST-2 and RTE — with the same
training, validation and test rows, token ids, classifier init, batches, optimizer (torch AdamW),
schedule (6 % linear warmup, linear decay), learning rate, batch size and steps; 3 seeds.

    .venv/bin/python benchmarks/quality_peers.py --calibrate     # ~2 min: times 3 steps of every run, prints the estimate
    .venv/bin/python benchmarks/quality_peers.py                 # the CPU mode (SST-2, RTE), ~85 min: see MODES
    .venv/bin/python benchmarks/quality_peers.py --mode gap      # SST-2 with 3x the rows, peftlab: the second budget
    .venv/bin/python benchmarks/quality_peers.py --mode rte      # RTE for 2 epochs: its second budget (~2.3 h)
    .venv/bin/python benchmarks/quality_peers.py --device cuda   # the GPU mode: SST-2, RTE, MRPC, 8 workers, bf16
    .venv/bin/python benchmarks/quality_peers.py --smoke         # tiny random BERT, CI time, same code path
    .venv/bin/python benchmarks/quality_peers.py --rewrite quality_peers   # md + png from the json

Token ids are made once here (quality_peers_data.py) and handed to the workers in one file; each worker
process (quality_peers_worker.py for peftlab and HF PEFT in .venv, peers/adapterhub_quality_worker.py in
benchmarks/.venv-adapters) runs the one loop of quality_peers_train.py. Method settings and the mapping
between libraries: quality_peers_methods.py. Results: benchmarks/results/<name>.md/.json/.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import quality_peers_sched as sched
from quality_peers_data import TaskBudget, build_data
from quality_peers_methods import LIBRARIES, PROMPT_LENGTH, method_labels, methods

HERE = Path(__file__).parent
RESULTS = HERE / "results"


@dataclass
class Mode:
    budgets: dict               # key -> TaskBudget; a key is a GLUE task, or a second budget naming its task
    seeds: tuple = (42, 43, 44)
    slots: int = 2              # worker processes at once
    threads: int = 1            # torch threads per worker
    device: str = "cpu"
    smoke: bool = False
    only: dict = field(default_factory=dict)    # key -> {"libraries", "methods"}: a restricted key
    calibration: str | None = None              # the mode whose calibration.json sizes this one (None: its own)


# the adapter goal's second budget: full fine-tuning and the methods under 1 % trainable, peftlab only
SECOND = {"libraries": ["peftlab"], "methods": [
    "Full fine-tuning", "LoRA (r=8, α=16, q, v)", "(IA)³", "Houlsby (k=12)", "Pfeiffer (k=12)",
    "Compacter (n=4, k=12)", "Compacter++ (n=4, k=12)", "Parallel (k=12, s=4)"]}
# the third budget: 4x the second's rows, the methods whose gap the second left widest apart or unexplained
LONG = {"libraries": ["peftlab"], "methods": [
    "Full fine-tuning", "LoRA (r=8, α=16, q, v)", "(IA)³", "Houlsby (k=12)", "Parallel (k=12, s=4)"]}
# Sized from --calibrate on this machine (docs/benchmarks_quality.md, "Peers"): batch 32, length-grouped
# batches, two workers of one thread. SST-2 is ~36 min of the two cores, one epoch of RTE ~60 (68 tokens
# a row: 5x SST-2's per step); the longer budgets have their own modes.
MODES = {
    # SST-2: one epoch of the first 4,000 training rows (125 steps), the whole test split (872 rows); RTE:
    # one epoch of every training row (2,490: 78 steps), up to 128 tokens, its test half (139 rows); every
    # method and library
    "cpu": Mode({"sst2": TaskBudget(train=4000, max_length=64), "rte": TaskBudget(epochs=1, max_length=128)}),
    # the second budget: 3x the rows (375 steps), peftlab only; ~20 min alone, ~40 at that load
    "gap": Mode({"sst2-x3": TaskBudget(task="sst2", train=12000, max_length=64)}, only={"sst2-x3": SECOND},
                calibration="cpu"),
    # the third budget: 48,000 rows (1,500 steps), seeds 42 and 43, peftlab only; ~30 min alone
    "gap-long": Mode({"sst2-x12": TaskBudget(task="sst2", train=48000, max_length=64)}, seeds=(42, 43),
                     only={"sst2-x12": LONG}, calibration="cpu"),
    # RTE's second budget: every training row (2,490) for 2 epochs (156 steps); ~2.3 h alone
    "rte": Mode({"rte-x2": TaskBudget(task="rte", epochs=2, max_length=128)}),
    # one H200: 8 worker processes share the GPU (MiniLM at batch 32 leaves it mostly idle: launch-bound
    # steps of ~10 ms overlap), bf16 autocast; SST-2 on 16,000 rows (500 steps), RTE 6 epochs (468), MRPC 4
    # (460), SST-2 x3 (1,500 steps) as the second budget: ~139K steps, ~6 min at an assumed 2.5 ms of GPU
    # per step. Not measured (no GPU was lent): run --device cuda --calibrate first; it prints the estimate.
    "cuda": Mode({"sst2": TaskBudget(train=16000, max_length=64),
                  "rte": TaskBudget(epochs=6, max_length=128),
                  "mrpc": TaskBudget(epochs=4, max_length=128),
                  "sst2-x3": TaskBudget(task="sst2", train=48000, max_length=64)},
                 slots=8, threads=2, device="cuda", only={"sst2-x3": SECOND}),
    "smoke": Mode({"sst2": TaskBudget(train=48, test=40, batch_size=16, max_length=64),
                   "rte": TaskBudget(train=32, test=24, batch_size=16, max_length=64),
                   "sst2-x3": TaskBudget(task="sst2", train=96, test=40, batch_size=16, max_length=64)},
                  seeds=(42, 43), smoke=True, only={"sst2-x3": SECOND}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=list(MODES), default=None, help="default: cpu, or cuda with --device cuda")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--smoke", action="store_true", help="same as --mode smoke")
    parser.add_argument("--calibrate", action="store_true",
                        help="time 3 steps of every run (seed 42), print the estimate, write <work>/calibration.json")
    parser.add_argument("--libraries", nargs="*", choices=LIBRARIES, default=None, help="default: all three")
    parser.add_argument("--methods", nargs="*", default=None, help=f"default: all of {method_labels()}")
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="one learning rate for every selected method "
                        "(a learning-rate check; default: each method's own, quality_peers_methods.py)")
    parser.add_argument("--train-pooler", action="store_true", help="BERT's pooler trains with every method, "
                        "at its learning rate (the pooler check: all-MiniLM-L6-v2's pooler was never trained)")
    parser.add_argument("--slots", type=int, default=None, help="worker processes at once")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--model", default=None, help="a local all-MiniLM-L6-v2 folder (default: the offline "
                        "package's; benchmarks/gpu/prepare.py makes one for a GPU machine)")
    parser.add_argument("--work", default=str(HERE.parent / "runs" / "quality_peers"))
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--name", default=None, help="results file stem (default: quality_peers[_<mode>])")
    parser.add_argument("--note", default="", help="about the machine, for the results")
    parser.add_argument("--rewrite", metavar="NAME", help="only rewrite <results-dir>/NAME.md and .png from NAME.json")
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else args.mode or ("cuda" if args.device == "cuda" else "cpu")
    args.named_libraries, args.libraries = args.libraries, args.libraries or list(LIBRARIES)
    known = methods("x", [0], "")
    unknown = [m for m in args.methods or [] if m not in known]
    if unknown:
        parser.error(f"--methods: no method {unknown[0]!r}; the methods are {list(known)}")
    return args


def configure(args) -> Mode:
    mode = MODES[args.mode]
    budgets = {k: b for k, b in mode.budgets.items() if not args.tasks or k in args.tasks}
    return Mode(budgets, tuple(args.seeds or mode.seeds), args.slots or mode.slots, args.threads or mode.threads,
                "cuda" if args.device == "cuda" else mode.device, mode.smoke, mode.only,
                mode.calibration or args.mode)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    results = Path(args.results_dir)
    if args.rewrite:
        from quality_peers_report import write_results
        payload = json.loads((results / f"{args.rewrite}.json").read_text())
        write_results(results, args.rewrite, payload)
        return payload
    mode = configure(args)
    work = Path(args.work) / args.mode
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = build_data(mode.budgets, mode.seeds, args.data_dir, work, mode.smoke, PROMPT_LENGTH, args.model)
    data_file = work / "data.pt"
    torch.save(data, data_file)
    # AdapterHub's venv is made on first use on a CPU machine (as speed.py does); never in smoke mode (CI)
    # or on a GPU machine, whose device time a pip install without network would burn
    pythons, skipped = _pythons(args.libraries, create=mode.device == "cpu" and not mode.smoke)
    libraries = [lib for lib in args.libraries if lib not in skipped]
    labels = args.methods or method_labels()
    plan = dict(table_for_task=lambda key: _table(data, key), libraries=libraries, labels=labels,
                device=mode.device, tokenizer_path=data["tokenizer_path"],
                only=named_restriction(mode.only, args.methods, args.named_libraries))
    jobs = sched.make_jobs(tasks=mode.budgets, seeds=mode.seeds, calibrate=False, **plan)
    apply_checks(jobs, args)
    steps = {k: task["stats"]["steps"] for k, task in data["tasks"].items()}
    glue = {k: task["name"] for k, task in data["tasks"].items()}
    cost_with = lambda cal: lambda chunk: sum(sched.estimate_run(j, cal, steps, glue) for j in chunk)  # noqa: E731
    chunks = sched.chunks_of(jobs, by="environment" if mode.smoke else "method")
    if args.calibrate:
        unrestricted = {k: b for k, b in mode.budgets.items() if k not in mode.only}
        if not unrestricted:
            raise SystemExit(f"--mode {args.mode} is sized by the {mode.calibration} mode's calibration: "
                             f"run --mode {mode.calibration} --calibrate")
        calibration_jobs = sched.make_jobs(tasks=unrestricted, seeds=mode.seeds[:1], calibrate=True, **plan)
        return calibrate(calibration_jobs, chunks, cost_with, data, work, data_file, pythons, mode)
    calibration = _load_calibration(work.parent / mode.calibration / "calibration.json")
    startup = (calibration or {}).get("startup_s", sched.STARTUP_S)
    makespan, ordered = sched.schedule(chunks, cost_with(calibration), mode.slots, startup)
    estimate = makespan / 60 if calibration else None
    print(f"{len(jobs)} runs" + (f", estimated {estimate:.0f} min from the {mode.calibration} mode's calibration"
                                 if estimate else ""))
    name = args.name or ("quality_peers" if args.mode == "cpu" else f"quality_peers_{args.mode.replace('-', '_')}")

    def write(records, final=False):
        from quality_peers_report import write_results
        meta = _meta(args, mode, data, libraries, labels, skipped, started, final, estimate, plan["only"])
        write_results(results, name, {"meta": meta, "runs": records}, show=final)
    records, _ = sched.run_chunks(ordered, work, data_file, pythons, mode.slots, mode.threads, mode.device,
                                  on_chunk=write)
    write(records, final=True)
    return {"runs": records}


def named_restriction(only: dict, methods: list | None, libraries: list | None) -> dict:
    """A restricted budget (the gap modes') also runs the methods and libraries named with --methods and
    --libraries: what the user asked for."""
    def extended(rule, key, named):
        return list(dict.fromkeys(rule.get(key, []) + (named or [])))
    return {key: dict(rule, methods=extended(rule, "methods", methods), libraries=extended(rule, "libraries", libraries))
            for key, rule in only.items()}


def apply_checks(jobs: list[dict], args) -> None:
    """--lr and --train-pooler: one change to every run, for the checks of a gap's cause."""
    for job in jobs:
        job["lr"] = args.lr or job["lr"]
        job["train_pooler"] = args.train_pooler


def _table(data: dict, task: str) -> dict:
    prompt = data["tasks"][task]["prompt"]
    return methods(prompt["text"], prompt["ids"], data["tokenizer_path"])


def _pythons(libraries, create: bool) -> tuple[dict, dict]:
    """Interpreter per environment, and the libraries skipped with why."""
    import sys
    pythons, skipped = {"main": sys.executable}, {}
    if "AdapterHub" in libraries:
        python = sched.adapterhub_python(create)
        if python is None:
            skipped["AdapterHub"] = f"no AdapterHub environment ({sched.ADAPTERHUB_VENV} absent or not creatable)"
        else:
            pythons["adapterhub"] = python
    return pythons, skipped


def _load_calibration(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def calibrate(jobs, planned_chunks, cost_with, data, work: Path, data_file: Path, pythons: dict,
              mode: Mode) -> dict:
    """A few timed steps of every run (seed 42; a second budget reuses its task's), on the slots the real
    run uses, one chunk per environment and task; then the estimate of the whole mode: steps x s/step +
    eval + setup per run, plus each worker's startup, spread longest-first over the slots. Written to
    <work>/calibration.json, which the real run reads to order its chunks and print its estimate."""
    started = time.perf_counter()
    (work / "calibration").mkdir(parents=True, exist_ok=True)
    # each chunk starts with an untimed copy of its first run: a process's first run pays one-off costs
    # (allocator growth, lazy init) that the real run's chunks pay once each, inside the startup estimate
    chunks = [[dict(chunk[0], warmup=True)] + chunk for chunk in sched.chunks_of(jobs, by="task")]
    records, walls = sched.run_chunks(chunks, work / "calibration", data_file, pythons, mode.slots, mode.threads,
                                      mode.device)
    records = [r for r in records if not r.get("warmup")]
    tasks = data["tasks"]
    summary = sched.calibration_summary(records, walls, {k: v["stats"]["test_rows"] for k, v in tasks.items()})
    makespan, _ = sched.schedule(planned_chunks, cost_with(summary), mode.slots, summary["startup_s"])
    # the same from CPU time per step: what the run takes when each worker has a core to itself
    cpu_only = dict(summary, runs={k: dict(v, s_per_step=v["cpu_s_per_step"]) for k, v in summary["runs"].items()})
    cpu_makespan, _ = sched.schedule(planned_chunks, cost_with(cpu_only), mode.slots, summary["startup_s"])
    summary.update(estimate_min=makespan / 60, estimate_cpu_min=cpu_makespan / 60,
                   runs_planned=sum(map(len, planned_chunks)),
                   steps={k: v["stats"]["steps"] for k, v in tasks.items()},
                   errors={f"{r['library']}|{r['method']}|{r['task']}": r["error"] for r in records if "error" in r},
                   calibration_min=(time.perf_counter() - started) / 60, slots=mode.slots, threads=mode.threads,
                   machine=_machine(mode), load_average=os.getloadavg(),
                   budgets={k: asdict(b) for k, b in mode.budgets.items()})
    (work / "calibration.json").write_text(json.dumps(summary, indent=2))
    _print_calibration(summary)
    return summary


def _print_calibration(summary: dict) -> None:
    print(f"{'library | method | task':56s} s/step (CPU s/step)  eval s  setup s")
    for key, v in sorted(summary["runs"].items(), key=lambda kv: kv[0].split("|")[::-1]):
        print(f"{key:56s} {v['s_per_step']:6.3f} ({v['cpu_s_per_step']:6.3f}) {v['eval_s']:10.1f} {v['setup_s']:8.1f}")
    for key, error in summary["errors"].items():
        print(f"{key:60s} error: {error}")
    print(f"steps per run: {summary['steps']}; worker startup {summary['startup_s']:.1f} s")
    print(f"estimate for {', '.join(summary['steps'])}: {summary['runs_planned']} runs on {summary['slots']} workers x "
          f"{summary['threads']} thread(s): {summary['estimate_min']:.1f} min at the calibration's load (average "
          f"{summary['load_average'][0]:.1f}), {summary['estimate_cpu_min']:.1f} min with a core per worker "
          f"(CPU time per step); this calibration took {summary['calibration_min']:.1f} min")


def _machine(mode: Mode) -> str:
    where = torch.cuda.get_device_name(0) if mode.device == "cuda" and torch.cuda.is_available() else \
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    return f"{where}; {mode.slots} worker processes x {mode.threads} torch thread(s)"


def _meta(args, mode: Mode, data, libraries, labels, skipped, started, final, estimate, only: dict) -> dict:
    tables = {t: {label: {"lr": args.lr or m.lr, "configs": m.configs, "notes": m.notes}
                  for label, m in _table(data, t).items() if label in labels} for t in data["tasks"]}
    return {"mode": args.mode, "partial": not final, "wall_min": (time.time() - started) / 60,
            "train_pooler": args.train_pooler, "lr_override": args.lr,
            "estimate_min": estimate,
            "machine": _machine(mode) + (f", {args.note}" if args.note else ""), "device": mode.device,
            "seeds": list(mode.seeds), "libraries": libraries, "skipped": skipped, "smoke": mode.smoke,
            "budgets": {t: asdict(b) for t, b in mode.budgets.items()},
            "data": {t: task["stats"] for t, task in data["tasks"].items()},
            "prompt_text": {task["name"]: task["prompt"]["text"] for task in data["tasks"].values()},
            "model": "tiny random BERT (smoke)" if mode.smoke else "all-MiniLM-L6-v2 (offline)",
            "methods": tables[next(iter(tables))] if tables else {},
            "optimizer": "torch AdamW (fused), weight decay 0, betas (0.9, 0.999), eps 1e-8, grad-norm clip 1.0",
            "schedule": "linear warmup over 6 % of the steps, then linear decay to 0",
            "only": only, "glue_task": {k: task["name"] for k, task in data["tasks"].items()},
            "torch": torch.__version__}


if __name__ == "__main__":
    main()
