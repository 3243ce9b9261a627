"""Runs inside benchmarks/.venv-adapters (AdapterHub `adapters` + transformers 4.57): times AdapterHub's
methods and its own frozen-backbone floor on a peftlab preset's shape, or measures one variant's peak
training memory, and prints JSON. Self-contained on purpose: peftlab needs transformers 5.x and cannot
be imported here, so the floor, the batch and the optimizer (fused AdamW) are copies of
benchmarks/common.py's definitions; the memory measure is benchmarks/peak_memory.py itself (torch only).

    python adapterhub_worker.py --config-json t5-small.json                 # timing, all methods
    python adapterhub_worker.py --config-json t5-small.json --memory floor lora   # peak memory, forked
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import adapters
import torch
import transformers as tf
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from peak_memory import peak_since, run_in_fork, start_peak  # noqa: E402  (benchmarks/peak_memory.py: torch only)

COMPACTER_REDUCTION = [32]     # set from --compacter-reduction-factor (as speed.py picks it for the shape)
CONFIGS = {
    "houlsby": lambda: adapters.DoubleSeqBnConfig(reduction_factor=32),
    "pfeiffer": lambda: adapters.SeqBnConfig(reduction_factor=32),
    "compacter": lambda: adapters.CompacterConfig(reduction_factor=COMPACTER_REDUCTION[0]),
    "compacter++": lambda: adapters.CompacterPlusPlusConfig(reduction_factor=COMPACTER_REDUCTION[0]),
    "lora": lambda: adapters.LoRAConfig(r=8, alpha=16),
    "ia3": lambda: adapters.IA3Config(),
    "prefix_tuning": lambda: adapters.PrefixTuningConfig(prefix_length=30),
}


def build(config_json: dict):
    config = tf.AutoConfig.for_model(**{k: v for k, v in config_json.items() if not k.startswith("_")})
    if config.is_encoder_decoder:
        return tf.AutoModelForSeq2SeqLM.from_config(config)
    if config.model_type in ("gpt2", "llama"):
        return tf.AutoModelForCausalLM.from_config(config)
    return tf.AutoModelForSequenceClassification.from_config(config)


def batch_for(model, batch_size, seq_len):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (batch_size, seq_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        batch["labels"] = torch.randint(5, model.config.vocab_size, (batch_size, max(2, seq_len // 4)), generator=g)
    elif "LM" in type(model).__name__:
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(0, model.config.num_labels, (batch_size,), generator=g)
    return batch


def time_steps(model, batch, steps):
    """`steps` (CPU s, wall s) step times after one warm-up step (as common.step_clocks_timer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)   # as peftlab.train.optim.adamw on CPU/CUDA
    out = []
    for i in range(steps + 1):
        _sync()
        cpu, wall = time.process_time(), time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        if i:
            out.append((time.process_time() - cpu, time.perf_counter() - wall))
    return out


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def with_floor(model, run):
    """Everything frozen except one scalar scaling the input embeddings (T5 4.57 shares one module)."""
    for p in model.parameters():
        p.requires_grad_(False)
    scale = nn.Parameter(torch.ones((), device=next(model.parameters()).device))
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o * scale)
    model.register_parameter("_floor_scale", scale)
    try:
        return run()
    finally:
        handle.remove()
        del model._parameters["_floor_scale"]


def timing(model, batch, names, reps, steps) -> dict:
    times = {"adapterhub:floor": []}
    added = []
    for name in names:
        try:
            model.add_adapter(name, config=CONFIGS[name]())
        except Exception as err:       # a method that does not fit this shape: skipped, as speed.py does
            print(f"skip adapterhub:{name}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        added.append(name)
        times[f"adapterhub:{name}"] = []
    with_floor(model, lambda: time_steps(model, batch, 1))     # the process's first steps: not timed
    for _ in range(reps):
        times["adapterhub:floor"] += with_floor(model, lambda: time_steps(model, batch, steps))
        for name in added:
            model.train_adapter(name)
            times[f"adapterhub:{name}"] += time_steps(model, batch, steps)
            model.set_active_adapters(None)
    return {k: {"cpu": statistics.median(c for c, _ in v), "wall": statistics.median(w for _, w in v)}
            for k, v in times.items()}


def peak_of(model, batch, name, steps) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    baseline = start_peak()
    if name == "floor":
        with_floor(model, lambda: time_steps(model, batch, steps - 1))
    else:
        model.add_adapter(name, config=CONFIGS[name]())
        model.train_adapter(name)
        time_steps(model, batch, steps - 1)
    return peak_since(baseline)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--methods", nargs="*", default=list(CONFIGS))
    parser.add_argument("--memory", nargs="*", help="measure these variants' peak memory (methods or 'floor')")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compacter-reduction-factor", type=float, default=32)
    args = parser.parse_args()
    COMPACTER_REDUCTION[0] = args.compacter_reduction_factor
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(json.load(open(args.config_json))).train()
    adapters.init(model)
    batch = batch_for(model, args.batch_size, args.seq_len)
    if args.memory:
        out = {f"adapterhub:{name}": run_in_fork(peak_of, model, batch, name, args.steps) for name in args.memory}
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        out = timing(model, {k: v.to(device) for k, v in batch.items()}, args.methods, args.reps, args.steps)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
