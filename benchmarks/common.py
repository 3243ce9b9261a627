"""Shared pieces of the benchmarks: models from presets, batches, the frozen-backbone floor, timing.

Timings are reported as ratios measured in one run: methods are timed in interleaved blocks (each
repetition visits every method once), so drift and noise on a shared machine hit all of them alike.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

import peftlab as pl
from peftlab.train.optim import adamw
from peftlab.models import build_from_config, load_config


def build(preset: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_from_config(load_config(preset))
    return model.train()


def batch_for(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        batch["labels"] = torch.randint(5, vocab, (batch_size, max(2, seq_len // 4)), generator=g)
    elif "ForCausalLM" in type(model).__name__ or "LMHead" in type(model).__name__:
        batch["labels"] = ids.clone()
    else:
        batch["labels"] = torch.randint(0, model.config.num_labels, (batch_size,), generator=g)
    return batch


class InputScale(nn.Module):
    """The frozen-backbone floor: one trainable scalar on the input embeddings, so backward runs
    through every activation but computes no weight gradient."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def hook(self, module, args, output):
        return output * self.scale


@contextmanager
def floor(model: nn.Module):
    for p in model.parameters():
        p.requires_grad_(False)
    scale = InputScale()
    handles = [emb.register_forward_hook(scale.hook) for emb in _input_embeddings(model)]
    model.add_module("_floor_scale", scale)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        del model._modules["_floor_scale"]
        for p in model.parameters():
            p.requires_grad_(True)


def _input_embeddings(model):
    seen = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith(("embed_tokens", "word_embeddings", "wte")):
            if all(module is not s for s in seen):
                seen.append(module)
    return seen or [model.get_input_embeddings()]


@contextmanager
def full_finetune(model: nn.Module):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield model
    finally:
        model.load_state_dict(state)


@contextmanager
def peftlab_method(model: nn.Module, config):
    pl.attach(model, config, name="bench")
    try:
        yield model
    finally:
        pl.detach(model, "bench")


def train_step_timer(model: nn.Module, batch: dict) -> Callable[[int], list[float]]:
    """Returns run(n) -> n wall-clock step times (forward + backward + AdamW step), after one warm-up
    step: `step_clocks_timer` with the wall clock only."""
    clocks = step_clocks_timer(model, batch)
    return lambda n: [wall for _, wall in clocks(n)]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_medians(variants: dict, model: nn.Module, batches: dict, reps: int, steps: int,
                        progress=None) -> dict[str, float]:
    """Median wall-clock train-step time per variant (see `interleaved_clock_medians`)."""
    medians = interleaved_clock_medians(variants, model, batches, reps, steps, progress)
    return {name: clocks["wall"] for name, clocks in medians.items()}


def step_clocks_timer(model: nn.Module, batch: dict) -> Callable[[int], list[tuple[float, float]]]:
    """Returns run(n) -> n train steps' (process CPU seconds, wall seconds): forward + backward + fused
    AdamW, after one warm-up step unless `warmup=False`. With one thread, CPU time is the step's own work and leaves out
    waiting for a core, which wall time on a machine shared with other jobs does not."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=1e-5)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run(n: int, warmup: bool = True) -> list[tuple[float, float]]:
        if warmup:
            step()
        out = []
        for _ in range(n):
            _sync()
            cpu, wall = time.process_time(), time.perf_counter()
            step()
            _sync()
            out.append((time.process_time() - cpu, time.perf_counter() - wall))
        return out

    return run


def interleaved_clock_medians(variants: dict, model: nn.Module, batches: dict, reps: int, steps: int,
                              progress=None) -> dict[str, dict[str, float]]:
    """Per variant {"cpu": median CPU s, "wall": median wall s} per train step. A variant is a context
    manager factory `ctx(model)` that yields the module to call (attaching on enter, restoring the model
    on exit); each repetition times every variant once, in a rotating order. `batches[name]` overrides
    the batch for one variant."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            with variants[name](model) as runnable:
                times[name] += step_clocks_timer(runnable, batches.get(name, batches["default"]))(steps)
            if progress:
                progress(name)
    return {k: {"cpu": statistics.median(c for c, _ in v), "wall": statistics.median(w for _, w in v)}
            for k, v in times.items()}


def set_allocator(default: bool) -> str:
    """Applies the runner's allocator setting (freed memory kept between steps: peftlab.train.allocator) unless
    `default`; returns how the process's malloc is set, for the report."""
    from peftlab.train.allocator import keep_freed_memory
    if default:
        return "glibc's defaults (freed activations go back to the kernel)"
    if keep_freed_memory():
        return "the runner's: freed memory kept between steps (`train.keep_freed_memory`)"
    return "unchanged (not glibc, or malloc tuned by the environment)"

