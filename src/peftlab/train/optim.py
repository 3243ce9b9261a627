"""Optimizer, schedule and loss for the loop.

The loss is a *sum* over the process's rows divided by the number of labels (examples or target
tokens) in the whole global batch, times the number of processes (DDP averages gradients). That makes
one process and N processes, with or without gradient accumulation, compute the same gradient.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from transformers import get_constant_schedule_with_warmup, get_polynomial_decay_schedule_with_warmup

from .data import IGNORE
from .schema import TrainSection

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight")


def param_groups(model, train: TrainSection) -> list[dict]:
    """AdamW groups: the config's `param_groups` (first matching pattern wins), then the rest; biases
    and norm weights get no weight decay unless a group says otherwise."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict] = []
    taken: set[str] = set()
    for spec in train.param_groups:
        pattern = re.compile(spec["pattern"])
        chosen = [(n, p) for n, p in named if n not in taken and pattern.search(n)]
        taken.update(n for n, _ in chosen)
        lr = spec["learning_rate"] if spec["learning_rate"] is not None else train.learning_rate
        decay = spec["weight_decay"] if spec["weight_decay"] is not None else train.weight_decay
        groups += _split_decay(chosen, lr, decay, spec["pattern"])
    rest = [(n, p) for n, p in named if n not in taken]
    groups += _split_decay(rest, train.learning_rate, train.weight_decay, "default")
    return [g for g in groups if g["params"]]


def _split_decay(named, lr, decay, label) -> list[dict]:
    plain = [p for n, p in named if not n.endswith(NO_DECAY)]
    exempt = [p for n, p in named if n.endswith(NO_DECAY)]
    return [{"params": plain, "lr": lr, "weight_decay": decay, "name": label},
            {"params": exempt, "lr": lr, "weight_decay": 0.0, "name": f"{label} (no decay)"}]


FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def adamw(params, lr: float, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch supports it (CPU or CUDA, float parameters).

    PEFT methods train many small tensors (Compacter on T5-small: 177); the per-tensor loop of the
    default implementation costs several times the fused step, which shows in the train-step time."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fusable = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in tensors)
    return torch.optim.AdamW(groups, lr=lr, fused=True if fusable else None, **kwargs)


def build_optimizer(model, train: TrainSection, total_steps: int):
    optimizer = adamw(param_groups(model, train), lr=train.learning_rate, betas=tuple(train.adam_betas),
                      eps=train.adam_epsilon)
    return optimizer, build_schedule(optimizer, train, total_steps)


def build_schedule(optimizer, train: TrainSection, total_steps: int):
    """Linear warmup, then: linear decay to `lr_end` at the last step ("linear"); the same decay over
    `total_steps` counted from the end of the warmup, so it ends above lr_end ("linear_from_warmup": the
    ignite schedule of kernel-adapters' NLG train.py:500-510); or no decay ("constant")."""
    total = max(total_steps, 1)
    warmup = train.warmup_steps or int(train.warmup_ratio * total)
    if train.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    horizon = total + warmup if train.schedule == "linear_from_warmup" else total
    # HF's polynomial schedule (power 1 = linear) reads lr_end against train.learning_rate; a group with
    # its own rate ends at the same fraction of it, as in the reference trainers
    return get_polynomial_decay_schedule_with_warmup(optimizer, warmup, horizon, lr_end=train.lr_end, power=1.0)


def gradient_norm(parameters: list) -> torch.Tensor:
    """The L2 norm of the parameters' gradients together (0 with none)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def clip_gradients(parameters: list, max_norm: float | None, norm: torch.Tensor) -> None:
    """Scale the gradients in place so that their norm is at most `max_norm` (none: no clipping).
    torch's clip_grads_with_norm_ takes the *parameters* (it reads and writes `.grad`): given gradient
    tensors it finds no `.grad` on them and changes nothing."""
    if max_norm and parameters:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)


def loss_sum(kind: str, logits: torch.Tensor, labels: torch.Tensor, regression: bool,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed loss over this batch: cross-entropy (or squared error for regression) per example, or
    per target token for text-to-text (causal models predict token t+1 from position t)."""
    logits = logits.float()
    if kind == "classification":
        if regression:
            return ((logits.squeeze(-1) - labels.float()) ** 2).sum()
        return F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
    if logits.shape[1] > labels.shape[1]:      # virtual tokens (prompts) prepended to a decoder's input
        logits = logits[:, -labels.shape[1]:]
    if kind == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                           reduction="sum", label_smoothing=label_smoothing)
