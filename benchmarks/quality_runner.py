"""The runs behind benchmarks/quality.py: method settings, one training run through peftlab's Trainer,
and the GLUE / E2E sweeps. Each run returns a flat record (method, task, seed, score, trainable %, time).

The Trainer is used as a user would, with three savings for a sweep of many short runs in one process
(measured in docs/benchmarks_quality.md): the task files are read and split once per task, not once
per run; evaluation happens once, on the test split, after the last step (no validation passes, no
"best" checkpoint); and SmolLM2 is converted from its GGUF file to a local safetensors folder once,
since reading the GGUF costs tens of seconds per run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import peftlab as pl
from peftlab.train import loop
from peftlab.train.loop import Trainer
from peftlab.train.schema import RunConfig


@dataclass
class Budget:
    train: int | None = None        # first N training rows; None: all
    steps: int | None = None        # optimizer steps; None: `epochs` over the subset
    epochs: float = 1.0
    test: int | None = None         # first N test rows (E2E: distinct MRs); None: the whole test split
    batch_size: int = 16
    max_length: int = 64            # tokens per example (E2E: the source; its runs pass their own)


ADAPTER = {"reduction_factor": 32, "unfreeze_layer_norms": True}    # k = 12 on MiniLM (d = 384)
ADAPTER_LR, PROMPT_LR = 3e-3, 3e-1
# label -> (method config, learning rate). Compacter's settings scaled to MiniLM; learning rates per
# family: adapters 3e-3 (Compacter), prompts 0.3 (Lester et al., ATTEMPT), full FT 1e-4. LoRA at 3e-3
# too: at 1e-3 its loss did not move in 60 steps (mean 0.685; SST-2 test 53.0), at 3e-3 it
# reached 81.3 % on SST-2 *validation* (a 60-step check, docs/benchmarks_quality.md).
GLUE_METHODS = {
    "Full fine-tuning": ({"method": "full"}, 1e-4),
    "Adapter (Houlsby)": ({"method": "houlsby", **ADAPTER}, ADAPTER_LR),
    "Pfeiffer": ({"method": "pfeiffer", **ADAPTER}, ADAPTER_LR),
    "AdapterDrop": ({"method": "houlsby", **ADAPTER, "leave_out": [0, 1]}, ADAPTER_LR),
    "Adapter-LowRank": ({"method": "low_rank_adapter", **ADAPTER}, ADAPTER_LR),
    "PHM-Adapter (n=12)": ({"method": "phm_adapter", **ADAPTER}, ADAPTER_LR),
    "Compacter (n=4)": ({"method": "compacter", **ADAPTER}, ADAPTER_LR),
    "Compacter++ (n=4)": ({"method": "compacter++", **ADAPTER}, ADAPTER_LR),
    "LoRA (r=8)": ({"method": "lora", "r": 8, "alpha": 16}, 3e-3),
    "(IA)3": ({"method": "ia3"}, 1e-2),
    "BitFit": ({"method": "bitfit"}, ADAPTER_LR),
    "Prompt tuning (random)": ({"method": "prompt_tuning", "length": 20, "init": "random"}, PROMPT_LR),
    "Prompt tuning (vocab)": ({"method": "prompt_tuning", "length": 20, "init": "vocab"}, PROMPT_LR),
    "Prefix tuning": ({"method": "prefix_tuning", "prefix_length": 10, "mlp_hidden": 64}, 3e-3),
    "Intrinsic-SAID": ({"method": "intrinsic_said", "intrinsic_dim": 2000}, 1e-2),
}
TRANSFER = ["SPoT", "ATTEMPT"]
SOURCE_METHOD = "Prompt tuning (vocab)"   # SPoT / ATTEMPT sources: this method's runs on the other tasks
# ≈ 1.6 % of SmolLM2-135M (134,515,008 base parameters) each, the kernel-adapters paper's GPT-2 budget;
# counts from attaching to the model (see docs/benchmarks_quality.md): LoRA 1.584 %, prefix tuning
# (reparameterized, counted while training) 1.604 %, inducer 1.597 %, Pfeiffer 1.607 %.
E2E_METHODS = {
    "LoRA (q, v; r=37)": ({"method": "lora", "r": 37, "alpha": 74, "slots": ["attn.q", "attn.v"]}, 2e-3),
    "Prefix tuning (m=30, MLP 176)": ({"method": "prefix_tuning", "prefix_length": 30, "mlp_hidden": 176}, 1e-3),
    "Inducer-tuning (r_k=11, r_v=10)": ({"method": "inducer", "rank_k": 11, "rank_v": 10}, 2e-3),
    "Pfeiffer (k=62)": ({"method": "pfeiffer", "reduction_factor": 9.2}, 2e-3),
}


_read_splits = loop.load_splits
_SPLITS: dict = {}


def _splits_once(task, *args, **kwargs):
    """loop.load_splits, read once per process for each task and arguments (whatever they grow to)."""
    key = (task.name, repr(args), repr(sorted(kwargs.items())))
    if key not in _SPLITS:
        _SPLITS[key] = _read_splits(task, *args, **kwargs)
    return _SPLITS[key]


_build_model = loop.build_model
TRAIN_POOLER = False     # quality.py --train-pooler: the head check of results/quality.md


def _build_with_pooler(config, tasks):
    """The runner's model, with BERT's pooler trained too when TRAIN_POOLER (PEFT methods train the
    classifier only, and all-MiniLM-L6-v2's pooler was never trained: see docs/benchmarks_quality.md)."""
    model, tokenizer, kind = _build_model(config, tasks)
    pooler = getattr(getattr(model, "bert", None), "pooler", None)
    if TRAIN_POOLER and pooler is not None:
        pooler.requires_grad_(True)
    return model, tokenizer, kind


class SweepTrainer(Trainer):
    """The Trainer, evaluated on the test split only (the final weights; no validation pass)."""

    def evaluate_split(self, split: str, **kwargs):
        return {} if split == "validation" else super().evaluate_split(split, **kwargs)


def run_one(task: str, method: dict, lr: float, seed: int, out_dir: Path, budget: Budget, data_dir: str,
            threads: int, model: str = "minilm", save_adapter: bool = False, precision: str = "fp32",
            **model_extra) -> dict:
    config = {"tasks": [task], "method": method, "output_dir": str(out_dir), "overwrite": True,
              "model": {"name": model, "max_length": budget.max_length, **model_extra},
              "data": {"dir": data_dir, "max_train_samples": budget.train, "max_eval_samples": budget.test},
              "train": {"epochs": budget.epochs, "max_steps": budget.steps, "batch_size": budget.batch_size,
                        "eval_batch_size": 64, "learning_rate": lr, "warmup_ratio": 0.06, "seed": seed,
                        "eval_strategy": "no", "eval_steps": 10 ** 9, "log_steps": 10 ** 9,
                        "tensorboard": False, "progress_bar": False, "threads": threads,
                        "precision": precision}}
    loop.load_splits = _splits_once     # read each task's files once per process (see the module doc)
    loop.build_model = _build_with_pooler
    started = time.perf_counter()
    trainer = SweepTrainer(RunConfig.from_dict(config))
    setup_s = time.perf_counter() - started
    results = trainer.run()
    if save_adapter:
        pl.save(trainer.model, out_dir / "adapter" / "default", name="default")
    test = results["tasks"][trainer.tasks[0].name]["test"]
    return {"task": task, "seed": seed, "percent": 100 * results["trainable"] / results["base"],
            "final_loss": results["train"]["final_loss"],
            "trainable": results["trainable"], "test": test, "steps": results["train"]["steps"],
            "train_s": results["train"]["wall_s"], "setup_s": setup_s, "precision": precision,
            "run_s": time.perf_counter() - started}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def run_glue(tasks: dict, sources: dict, methods: list, seeds, data_dir, work: Path, threads: int,
             on_record=None) -> list:
    """Source runs first (they feed SPoT / ATTEMPT), then task by task every method and seed, so that
    a sweep stopped early leaves whole columns."""
    methods = [m for m in methods if m in GLUE_METHODS and not (sources and m == SOURCE_METHOD)]
    methods += TRANSFER if sources else []
    plan = [(SOURCE_METHOD, t, b) for t, b in sources.items()]
    plan += [(m, t, b) for t, b in tasks.items() for m in methods]
    records = []
    bar = tqdm(total=len(plan) * len(seeds), desc="glue", unit="run")
    for label, task, budget in plan:
        for seed in seeds:
            record = run_labelled(label, task, seed, budget, data_dir, work, threads, list(sources),
                                  table=task in tasks)
            records.append(record)
            if on_record:
                on_record(records)
            bar.set_postfix_str(f"{label} {task} {record['score']:.1f}")
            bar.update()
    bar.close()
    return records


def run_labelled(label: str, task: str, seed: int, budget: Budget, data_dir, work: Path, threads: int,
                 source_tasks: list, table: bool = True, model: str = "minilm", precision: str = "fp32") -> dict:
    """One GLUE run of a table method (a GLUE_METHODS label, SPoT or ATTEMPT) in <work>/<method>/<task>/<seed>;
    the source method saves its adapter there for SPoT / ATTEMPT."""
    from peftlab.tasks import average
    method, lr = method_for(label, task, seed, work, source_tasks)
    out = work / slug(label) / task / str(seed)
    record = run_one(task, method, lr, seed, out, budget, data_dir, threads, model=model,
                     save_adapter=label == SOURCE_METHOD, precision=precision)
    record.update(method=label, lr=lr, score=100 * average(record["test"]), table=table)
    return record


def method_for(label, task, seed, work, source_tasks):
    """(method config, learning rate) of a table label; SPoT / ATTEMPT read the source method's adapters
    saved for the same seed on the other source tasks."""
    if label not in TRANSFER:
        return GLUE_METHODS[label]
    sources = [str(work / slug(SOURCE_METHOD) / other / str(seed) / "adapter" / "default")
               for other in source_tasks if other != task]
    kind = "spot" if label == "SPoT" else "attempt"
    return {"method": kind, "sources": sources}, PROMPT_LR


def local_smollm2(work: Path) -> str:
    """SmolLM2-135M as a safetensors folder beside the modes' work folders: the GGUF file is parsed
    and dequantized once (about 30 s), not in every run."""
    target = work.parent / "smollm2-135m-hf"
    if not (target / "config.json").exists():
        import transformers as tf
        from peftlab.models import load_pretrained
        model, tokenizer = load_pretrained("smollm2", head=tf.AutoModelForCausalLM)
        # the weights are dequantized to float32 on load; only the GGUF marker blocks saving them
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


def run_e2e(budget: Budget, data_dir, work: Path, threads: int, on_record=None) -> list:
    started = time.perf_counter()
    model = local_smollm2(work)
    convert_s = time.perf_counter() - started
    records = []
    for label in tqdm(E2E_METHODS, desc="e2e", unit="run"):
        records.append(run_e2e_method(label, budget, data_dir, work, threads, model, convert_s=convert_s))
        if on_record:
            on_record(records)
    return records


def run_e2e_method(label: str, budget: Budget, data_dir, work: Path, threads: int, model: str,
                   precision: str = "fp32", convert_s: float = 0.0) -> dict:
    """One E2E run of an E2E_METHODS label on the (converted) SmolLM2 folder `model`, seed 42."""
    method, lr = E2E_METHODS[label]
    record = run_one("e2e", method, lr, 42, work / "e2e" / slug(label), budget, data_dir, threads,
                     model=model, max_length=80, max_target_length=64, precision=precision)
    record.update(method=label, lr=lr, convert_s=convert_s)
    return record
