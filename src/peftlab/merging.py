"""Generic merge: a part that can merge exposes `delta_weight()` (added to W, shaped out x in) or
`merge_scale()` -> (vector, "out" | "in") (multiplying W's rows or columns, and the bias for "out")."""
from __future__ import annotations

import torch
from torch import nn

from .errors import PeftlabError
from .state import controller_of
from .runtime import Host, get_module
from .targeting import is_conv1d


def _parts(model: nn.Module, name: str):
    controller = controller_of(model)
    if controller is None or name not in controller.adapters:
        raise PeftlabError(f"no adapter named '{name}' is attached")
    attachment = controller.adapters[name]
    if not attachment.parts:
        raise PeftlabError(f"adapter '{name}' ({attachment.config.method}) cannot be merged: it has no part in "
                           f"the weights' layers (it acts on the input or the attention)")
    for path, part in attachment.parts:
        if not (hasattr(part, "delta_weight") or hasattr(part, "merge_scale")):
            raise PeftlabError(f"adapter '{name}' ({attachment.config.method}) cannot be merged: "
                               f"its {type(part).__name__} at {path} has no weight-space form")
    return [(get_module(model, path), part) for path, part in attachment.parts]


def _new_tensors(host: Host, part, sign: int) -> dict[str, torch.Tensor]:
    """The base layer's weight (and bias) after merging (sign=+1) or unmerging (sign=-1) `part`."""
    base = host.base_layer
    conv = is_conv1d(base)
    weight = base.weight.detach()
    out = {}
    if hasattr(part, "delta_weight"):
        delta = part.delta_weight().detach().to(weight.dtype)
        out["weight"] = weight + sign * (delta.T if conv else delta)
        bias = part.delta_bias() if hasattr(part, "delta_bias") else None
        if bias is not None:
            if getattr(base, "bias", None) is None:
                raise PeftlabError(f"cannot merge at {host.path}: the update has a bias and the layer has none")
            out["bias"] = base.bias.detach() + sign * bias.detach().to(base.bias.dtype)
        return out
    scale, axis = part.merge_scale()
    scale = scale.detach().to(weight.dtype)
    if sign < 0:
        if bool((scale == 0).any()):
            raise PeftlabError(f"cannot unmerge at {host.path}: a scale of zero is not invertible")
        scale = 1.0 / scale
    rows_are_out = not conv
    if (axis == "out") == rows_are_out:
        out["weight"] = weight * scale[:, None]
    else:
        out["weight"] = weight * scale[None, :]
    if axis == "out" and getattr(base, "bias", None) is not None:
        out["bias"] = base.bias.detach() * scale
    return out


@torch.no_grad()
def _apply(model: nn.Module, name: str, merged_now: bool) -> None:
    plans = []
    for host, part in _parts(model, name):
        if part.merged == merged_now:
            continue  # merging twice (or unmerging an unmerged adapter) changes nothing
        plans.append((host, part, _new_tensors(host, part, +1 if merged_now else -1)))
    for host, _, tensors in plans:
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            raise PeftlabError(f"refusing to merge adapter '{name}': non-finite weights at {host.path}")
    for host, part, tensors in plans:
        layer = host.base_layer
        if merged_now:      # keep the weights as they were (on the CPU), for an exact unmerge
            part.__dict__["premerge"] = {a: getattr(layer, a).detach().to("cpu", copy=True) for a in tensors}
            for attr, value in tensors.items():
                getattr(layer, attr).copy_(value)
            part.__dict__["merged_versions"] = {a: getattr(layer, a)._version for a in tensors}
        else:
            exact = _premerge(part, layer, tensors)
            if exact is None and getattr(part, "exact_unmerge_only", False):
                raise PeftlabError(f"cannot unmerge adapter '{name}' at {host.path}: the layer changed since the "
                                   f"merge and its update depends on the weights it was merged into")
            for attr, value in tensors.items():
                getattr(layer, attr).copy_(exact[attr] if exact else value)
        part.merged = merged_now


def _premerge(part, layer, tensors: dict) -> dict | None:
    """The pre-merge weights, if nothing has written the layer since this merge (the tensors' in-place
    version counters say so); else None, and the unmerge subtracts the update instead."""
    saved, versions = part.__dict__.pop("premerge", None), part.__dict__.pop("merged_versions", {})
    if saved is None or any(versions.get(a) != getattr(layer, a)._version for a in tensors):
        return None
    return {a: saved[a].to(getattr(layer, a).device) for a in tensors}


def merge(model: nn.Module, name: str) -> nn.Module:
    """Fold an adapter into the base weights; its parts then sit out of the forward. Idempotent."""
    _apply(model, name, True)
    return model


def unmerge(model: nn.Module, name: str) -> nn.Module:
    """Undo `merge`: the weights as they were, bit for bit, unless something wrote them since (another
    adapter merged into the same layer, an optimizer step): then the update is subtracted (float rounding)."""
    _apply(model, name, False)
    return model
