"""Runs inside benchmarks/.venv-adapters (AdapterHub `adapters` + transformers 4.57): times AdapterHub's
methods and its own frozen-backbone floor on a peftlab preset's shape, prints JSON medians (seconds).
Self-contained on purpose: peftlab needs transformers 5.x and cannot be imported here."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import adapters
import torch
import transformers as tf
from torch import nn

CONFIGS = {
    "houlsby": lambda: adapters.DoubleSeqBnConfig(reduction_factor=32),
    "pfeiffer": lambda: adapters.SeqBnConfig(reduction_factor=32),
    "compacter": lambda: adapters.CompacterConfig(reduction_factor=32),
    "compacter++": lambda: adapters.CompacterPlusPlusConfig(reduction_factor=32),
    "lora": lambda: adapters.LoRAConfig(r=8, alpha=16),
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
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    out = []
    for i in range(steps + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            out.append(time.perf_counter() - start)
    return out


def floor_steps(model, batch, steps):
    for p in model.parameters():
        p.requires_grad_(False)
    scale = nn.Parameter(torch.ones(()))
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o * scale)
    model.register_parameter("_floor_scale", scale)
    try:
        return time_steps(model, batch, steps)
    finally:
        handle.remove()
        del model._parameters["_floor_scale"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--methods", nargs="*", default=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(json.load(open(args.config_json))).train()
    adapters.init(model)
    batch = batch_for(model, args.batch_size, args.seq_len)
    times = {"adapterhub:floor": []}
    for name in args.methods:
        model.add_adapter(name, config=CONFIGS[name]())
        times[f"adapterhub:{name}"] = []
    for _ in range(args.reps):
        times["adapterhub:floor"] += floor_steps(model, batch, args.steps)
        for name in args.methods:
            model.train_adapter(name)
            times[f"adapterhub:{name}"] += time_steps(model, batch, args.steps)
            model.set_active_adapters(None)
    json.dump({k: statistics.median(v) for k, v in times.items()}, sys.stdout)


if __name__ == "__main__":
    main()
