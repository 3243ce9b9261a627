"""Quality on real data with the offline pretrained models (DESIGN §5), in the form of the Compacter
paper's Table 1: trainable %, per-task test metric, average, mean ± std over seeds.

    .venv/bin/python benchmarks/quality.py --quick        # ≤ 20 minutes on 2 CPU cores
    .venv/bin/python benchmarks/quality.py                # full data, 3 seeds (hours on a CPU)
    .venv/bin/python benchmarks/quality.py --part e2e     # SmolLM2-135M on E2E only

GLUE part: MiniLM (all-MiniLM-L6-v2) with a classification/regression head on CoLA, SST-2, MRPC,
STS-B, RTE from ../shared/data (or --data-dir). SPoT and ATTEMPT use the prompt-tuning runs of the
*other* tasks as their sources. E2E part: SmolLM2-135M (causal LM) with LoRA, prefix tuning,
inducer-tuning and Pfeiffer at a matched ≈ 1.6 % budget; BLEU and ROUGE-L on the dev set.
Writes benchmarks/results/quality.md (+ quality.json, quality.png).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from peftlab.train.loop import Trainer
from peftlab.train.schema import RunConfig

HERE = Path(__file__).parent
RESULTS = HERE / "results"
GLUE = ["cola", "sst2", "mrpc", "stsb", "rte"]
ADAPTER_LR, PROMPT_LR = 3e-3, 3e-1
# label -> (method config, learning rate). Compacter-style settings scaled to MiniLM (d = 384, k = 12).
GLUE_METHODS = {
    "Full fine-tuning": ({"method": "full"}, 5e-5),
    "Adapter (Houlsby)": ({"method": "houlsby", "reduction_factor": 32, "unfreeze_layer_norms": True}, ADAPTER_LR),
    "Pfeiffer": ({"method": "pfeiffer", "reduction_factor": 32, "unfreeze_layer_norms": True}, ADAPTER_LR),
    "AdapterDrop": ({"method": "houlsby", "reduction_factor": 32, "unfreeze_layer_norms": True,
                     "leave_out": [0, 1]}, ADAPTER_LR),
    "Adapter-LowRank": ({"method": "low_rank_adapter", "reduction_factor": 32, "unfreeze_layer_norms": True},
                        ADAPTER_LR),
    "PHM-Adapter (n=12)": ({"method": "phm_adapter", "reduction_factor": 32, "unfreeze_layer_norms": True},
                           ADAPTER_LR),
    "Compacter (n=4)": ({"method": "compacter", "reduction_factor": 32, "unfreeze_layer_norms": True}, ADAPTER_LR),
    "Compacter++ (n=4)": ({"method": "compacter++", "reduction_factor": 32, "unfreeze_layer_norms": True},
                          ADAPTER_LR),
    "LoRA (r=8)": ({"method": "lora", "r": 8, "alpha": 16}, 1e-3),
    "(IA)3": ({"method": "ia3"}, 3e-3),
    "BitFit": ({"method": "bitfit"}, ADAPTER_LR),
    "Prompt tuning (random)": ({"method": "prompt_tuning", "length": 20, "init": "random"}, PROMPT_LR),
    "Prompt tuning (vocab)": ({"method": "prompt_tuning", "length": 20, "init": "vocab"}, PROMPT_LR),
    "Prefix tuning": ({"method": "prefix_tuning", "prefix_length": 10}, 1e-3),
    "Intrinsic-SAID": ({"method": "intrinsic_said", "intrinsic_dim": 2000}, 1e-2),
}
SOURCE_METHOD = "Prompt tuning (vocab)"   # SPoT / ATTEMPT sources: this method's runs on the other tasks
E2E_METHODS = {   # ≈ 1.6 % of SmolLM2-135M, matched as in the kernel-adapters paper's GPT-2 budgets
    "LoRA": ({"method": "lora", "r": 56, "alpha": 112, "slots": ["attn.q", "attn.v"]}, 1e-3),
    "Prefix tuning": ({"method": "prefix_tuning", "prefix_length": 30, "flat": True}, 1e-3),
    "Inducer-tuning": ({"method": "inducer", "rank_k": 24, "rank_v": 48}, 1e-3),
    "Pfeiffer": ({"method": "pfeiffer", "reduction_factor": 4.0}, 1e-3),
}
MODES = {
    "quick": dict(train=300, eval=100, epochs=1.0, seeds=[42], e2e_train=200, e2e_eval=20, e2e_steps=30,
                  tasks=["sst2", "mrpc", "rte"]),
    "full": dict(train=None, eval=None, epochs=3.0, seeds=[42, 43, 44], e2e_train=5000, e2e_eval=None,
                 e2e_steps=2000),
}


def run_one(tasks, method, lr, seed, out_dir, mode, data_dir, model="minilm", **extra) -> dict:
    config = {"tasks": tasks, "method": method, "output_dir": str(out_dir), "overwrite": True,
              "model": {"name": model, "max_length": 64 if model == "minilm" else 96},
              "data": {"dir": data_dir, "max_train_samples": mode["train"], "max_eval_samples": mode["eval"]},
              "train": {"epochs": mode["epochs"], "batch_size": 16, "eval_batch_size": 64, "learning_rate": lr,
                        "warmup_ratio": 0.06, "eval_strategy": "epoch", "seed": seed, "tensorboard": False,
                        "progress_bar": False, **extra}}
    return Trainer(RunConfig.from_dict(config)).run()


def glue(mode, data_dir, work, methods, tasks=GLUE, transfer=True) -> dict:
    """{label: {"percent": p, "scores": {task: [test score per seed]}}}"""
    from peftlab.tasks import average
    table: dict = {}
    order = ([SOURCE_METHOD] if transfer else []) + [m for m in methods if m != SOURCE_METHOD]
    order += ["SPoT", "ATTEMPT"] if transfer else []
    bar = tqdm(total=len(order) * len(tasks) * len(mode["seeds"]), desc="glue", unit="run")
    for label in order:
        for task in tasks:
            for seed in mode["seeds"]:
                method, lr = _method_for(label, task, seed, work, tasks)
                results = run_one([task], method, lr, seed, work / _slug(label) / task / str(seed), mode, data_dir)
                row = table.setdefault(label, {"percent": 100 * results["trainable"] / results["base"], "scores": {}})
                row["scores"].setdefault(task, []).append(100 * average(results["tasks"][task]["test"]))
                bar.update()
    bar.close()
    return table


def _method_for(label, task, seed, work, tasks=GLUE):
    if label not in ("SPoT", "ATTEMPT"):
        return GLUE_METHODS[label]
    sources = [str(work / _slug(SOURCE_METHOD) / other / str(seed) / "adapter" / "default")
               for other in tasks if other != task]
    if label == "SPoT":
        return {"method": "spot", "sources": sources}, PROMPT_LR
    return {"method": "attempt", "sources": sources}, PROMPT_LR


def e2e(mode, data_dir, work) -> dict:
    from peftlab.tasks import average  # noqa: F401
    table = {}
    for label, (method, lr) in tqdm(E2E_METHODS.items(), desc="e2e", unit="run"):
        sub = {**mode, "train": mode["e2e_train"], "eval": mode["e2e_eval"]}
        results = run_one(["e2e"], method, lr, 42, work / "e2e" / _slug(label), sub, data_dir, model="smollm2",
                          max_steps=mode["e2e_steps"], batch_size=8, eval_strategy="no")
        table[label] = {"percent": 100 * results["trainable"] / results["base"], "metrics": results["tasks"]["e2e"]["test"]}
    return table


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def _cell(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def to_markdown(glue_table, e2e_table, meta) -> str:
    lines = ["# Quality on real data", "", f"Mode: {meta['mode']} ({meta['settings']}); wall time "
             f"{meta['wall_min']:.1f} min on {meta['machine']}.", ""]
    if glue_table:
        tasks = list(next(iter(glue_table.values()))["scores"])
        lines += ["## MiniLM (all-MiniLM-L6-v2) on GLUE, test split (DESIGN §5 splits)", "",
                  "| method | trainable % | " + " | ".join(tasks) + " | average |", "|---" * (len(tasks) + 3) + "|"]
        for label, row in glue_table.items():
            per_seed_avg = [statistics.mean(s) for s in zip(*row["scores"].values())]
            cells = [_cell(row["scores"][t]) for t in tasks]
            lines.append(f"| {label} | {row['percent']:.3f} | " + " | ".join(cells) + f" | {_cell(per_seed_avg)} |")
        lines.append("")
    if e2e_table:
        lines += ["## SmolLM2-135M on E2E (dev)", "", "| method | trainable % | BLEU | ROUGE-L |", "|---|---|---|---|"]
        for label, row in e2e_table.items():
            m = row["metrics"]
            lines.append(f"| {label} | {row['percent']:.3f} | {100 * m.get('bleu', 0):.1f} | "
                         f"{100 * m.get('rouge_l', m.get('rougeL', 0)):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=["all", "glue", "e2e"], default="all")
    parser.add_argument("--methods", nargs="*", default=list(GLUE_METHODS))
    parser.add_argument("--tasks", nargs="*", choices=GLUE, help="default: all five (quick: sst2 mrpc rte)")
    parser.add_argument("--no-transfer", action="store_true", help="skip SPoT and ATTEMPT (and their sources)")
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(HERE.parent / "runs" / "quality"))
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    start = time.time()
    work = Path(args.work)
    tasks = args.tasks or mode.get("tasks", GLUE)
    glue_table = (glue(mode, args.data_dir, work, args.methods, tasks, not args.no_transfer)
                  if args.part in ("all", "glue") else {})
    e2e_table = e2e(mode, args.data_dir, work) if args.part in ("all", "e2e") else {}
    import platform
    import torch
    meta = {"mode": mode_name, "settings": json.dumps(mode), "wall_min": (time.time() - start) / 60,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    RESULTS.mkdir(exist_ok=True)
    name = "quality" if args.part == "all" else f"quality_{args.part}"
    (RESULTS / f"{name}.md").write_text(to_markdown(glue_table, e2e_table, meta))
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "glue": glue_table, "e2e": e2e_table}, indent=2))
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
