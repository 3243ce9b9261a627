"""A saved adapter's task head onto a model with another label count (`pl.load(..., strict=False)`):
the head's output layer takes the saved shape, with a warning, and goes back on detach."""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from .layouts import layout_for
from .runtime import get_module


def fit_heads(model: nn.Module, tensors: dict[str, torch.Tensor], source) -> Callable[[], None] | None:
    """Resize each head output layer whose saved `base.*` tensors have another number of outputs; return
    the undo (None when nothing changed)."""
    heads = layout_for(model).heads
    params = dict(model.named_parameters())
    changed: list[tuple[nn.Module, dict, int | None]] = []
    for key, saved in tensors.items():
        name = key[len("base."):] if key.startswith("base.") else None
        if name is None or not name.endswith(".weight") or name.split(".")[0] not in heads:
            continue
        here = params.get(name)
        if here is None or here.dim() != 2 or saved.dim() != 2 or here.shape == saved.shape \
                or here.shape[1] != saved.shape[1]:
            continue
        module = get_module(model, name.rsplit(".", 1)[0])
        if isinstance(module, nn.Linear):
            changed.append(_resize(module, saved.shape[0], tensors.get(key[:-len("weight")] + "bias")))
            warnings.warn(f"{source}: the head '{name[:-7]}' has {saved.shape[0]} outputs there and "
                          f"{here.shape[0]} here: replaced by the saved one (strict=False)")
    if not changed:
        return None
    labels = getattr(model.config, "num_labels", None)
    model.config.num_labels = changed[-1][0].out_features

    def undo() -> None:
        for module, old, _ in changed:
            module.weight, module.bias, module.out_features = old["weight"], old["bias"], old["out"]
        model.config.num_labels = labels
    return undo


def _resize(module: nn.Linear, outputs: int, bias) -> tuple[nn.Module, dict, int]:
    old = {"weight": module.weight, "bias": module.bias, "out": module.out_features}
    like = module.weight
    module.weight = nn.Parameter(torch.zeros(outputs, like.shape[1], dtype=like.dtype, device=like.device),
                                 requires_grad=like.requires_grad)
    if module.bias is not None:
        module.bias = nn.Parameter(torch.zeros(outputs, dtype=like.dtype, device=like.device),
                                   requires_grad=module.bias.requires_grad)
    module.out_features = outputs
    return module, old, outputs
