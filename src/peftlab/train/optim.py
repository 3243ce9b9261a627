"""Optimizer, schedule and loss for the loop.

The loss is a *sum* over the process's rows divided by the number of labels (examples or target
tokens) in the whole global batch, times the number of processes (DDP averages gradients). That makes
one process and N processes, with or without gradient accumulation, compute the same gradient.
"""
from __future__ import annotations

import math
import re
import warnings

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_constant_schedule_with_warmup, get_polynomial_decay_schedule_with_warmup

from ..errors import PeftlabError
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
    if train.listed_twice:
        _list_twice(groups, named, tuple(train.listed_twice))
    return [g for g in groups if g["params"]]


def _list_twice(groups: list[dict], named, prefixes: tuple[str, ...]) -> None:
    """nlprunners lists classifier.dense twice in its optimizer (model_setup.py:51-54): the second copy
    sits right after the first in its group, so transformers' AdamW updates it twice per step."""
    doubled = {id(p) for n, p in named if n.startswith(prefixes)}
    if not doubled:
        raise PeftlabError(f"train.listed_twice {list(prefixes)}: no trained parameter starts with these names")
    for group in groups:
        group["params"] = [q for p in group["params"] for q in ((p, p) if id(p) in doubled else (p,))]


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


class TransformersAdamW(torch.optim.Optimizer):
    """The AdamW of transformers 2.x-4.x, which the seeds' trainers use (compacter's and ATTEMPT's HF
    Trainer, nlprunners' model_setup.py:296-298, kernel-adapters' run_glue.py): eps is added to sqrt(v)
    *before* the bias correction, and the decay is applied *after* the update, to the updated weights.
    torch's AdamW adds eps after the correction and decays first."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
                size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                p.addcdiv_(state["exp_avg"], denom, value=-size)
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def build_optimizer(model, train: TrainSection, total_steps: int):
    groups = param_groups(model, train)
    if train.optimizer == "adamw_transformers":
        with warnings.catch_warnings():     # listed_twice: the duplicate is the point (nlprunners)
            warnings.filterwarnings("ignore", "optimizer contains a parameter group with duplicate parameters")
            optimizer = TransformersAdamW(groups, lr=train.learning_rate, betas=train.adam_betas,
                                          eps=train.adam_epsilon)
    else:
        optimizer = adamw(groups, lr=train.learning_rate, betas=tuple(train.adam_betas), eps=train.adam_epsilon)
    return optimizer, build_schedule(optimizer, train, total_steps)


def build_schedule(optimizer, train: TrainSection, total_steps: int):
    """Linear warmup, then: linear decay to `lr_end` at the last step ("linear"); the same decay over
    `total_steps` counted from the end of the warmup, so it ends above lr_end ("linear_from_warmup": the
    ignite schedule of kernel-adapters' NLG train.py:500-510); or no decay ("constant")."""
    total = max(total_steps, 1)
    ratio = train.warmup_ratio * total
    warmup = train.warmup_steps or (ratio if train.fractional_warmup else int(ratio))
    if train.schedule == "constant":
        schedule = get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        horizon = total + warmup if train.schedule == "linear_from_warmup" else total
        # HF's polynomial schedule (power 1 = linear) reads lr_end against train.learning_rate; a group with
        # its own rate ends at the same fraction of it, as in the reference trainers
        schedule = get_polynomial_decay_schedule_with_warmup(optimizer, warmup, horizon, lr_end=train.lr_end,
                                                             power=1.0)
    if not train.scheduler_step_first:
        return schedule
    # nlprunners steps the scheduler before the optimizer (model_setup.py:217-220): update k uses rate k+1
    shifted = [lambda step, rate=rate: rate(step + 1) for rate in schedule.lr_lambdas]
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    return LambdaLR(optimizer, shifted)


def gradient_norm(parameters: list, more: list | None = None) -> torch.Tensor:
    """The L2 norm of the parameters' gradients and of the `more` tensors together (0 with none)."""
    grads = [p.grad for p in parameters if p.grad is not None] + list(more or ())
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
