"""`Average`: a new adapter whose weights are a weighted average of same-shaped adapters' weights.

Every tensor is averaged, except for LoRA, where averaging A and B separately would not average the
updates (B1 A1 + B2 A2 != (B1 + B2)(A1 + A2) / 2 ...). There the new adapter is a LoRA of rank
r1 + ... + rn with A = [A_1; ...; A_n] and B = [w_1 s_1 B_1, ..., w_n s_n B_n] (s_i = alpha_i / r_i,
scale 1), so that its update is exactly sum_i w_i ΔW_i. Base tensors trained in place (a task head)
are shared by the members already and are kept as they are.
"""
from __future__ import annotations

import torch

from .core import adapter_state, attach, detach, require
from .errors import PeftlabError
from .registry import config_from_dict


def _configs_differ(a: dict, b: dict, ignore=()) -> str | None:
    for key in sorted(set(a) | set(b)):
        if key not in ignore and a.get(key) != b.get(key):
            return f"'{key}' is {a.get(key)!r} vs {b.get(key)!r}"
    return None


def _check_same(model, members, ignore=()) -> list:
    controller = require(model)
    missing = [m for m in members if m not in controller.adapters]
    if missing:
        raise PeftlabError(f"cannot average: no adapter named '{missing[0]}'")
    attachments = [controller.adapters[m] for m in members]
    first = attachments[0]
    for other in attachments[1:]:
        if other.config.method != first.config.method:
            raise PeftlabError(f"cannot average '{first.name}' ({first.config.method}) with "
                               f"'{other.name}' ({other.config.method}): different methods")
        difference = _configs_differ(first.config.to_dict(), other.config.to_dict(), ignore)
        if difference:
            raise PeftlabError(f"cannot average '{first.name}' with '{other.name}': different shapes or "
                               f"placement ({difference})")
        if [p for p, _ in first.parts] != [p for p, _ in other.parts]:
            raise PeftlabError(f"cannot average '{first.name}' with '{other.name}': they sit on different modules")
    return attachments


def _new_adapter(model, config, name, fill) -> None:
    attach(model, config, name, activate=False)
    try:
        with torch.no_grad():
            fill()
    except BaseException:
        detach(model, name)
        raise


def average(model, members, weights, name: str) -> str:
    """Attach adapter `name` = sum_i weights[i] * members[i] (in weight space); returns `name`."""
    if len(weights) != len(members):
        raise PeftlabError(f"Average weights {list(weights)} must have {len(members)} entries")
    if _check_same(model, members[:1])[0].config.method == "lora":
        return _average_lora(model, members, weights, name)
    attachments = _check_same(model, members)
    states = [adapter_state(model, m) for m in members]
    for key, tensor in states[0].items():
        for member, state in zip(members[1:], states[1:]):
            if key not in state or state[key].shape != tensor.shape:
                raise PeftlabError(f"cannot average '{members[0]}' with '{member}': tensor '{key}' differs in shape")

    def fill():
        for key, tensor in adapter_state(model, name).items():
            if not key.startswith("base."):
                tensor.copy_(sum(w * state[key].to(tensor.dtype) for w, state in zip(weights, states)))

    _new_adapter(model, attachments[0].config, name, fill)
    return name


def _average_lora(model, members, weights, name) -> str:
    attachments = _check_same(model, members, ignore=("r", "alpha", "dropout"))
    rank = sum(a.config.r for a in attachments)
    data = {**attachments[0].config.to_dict(), "r": rank, "alpha": float(rank)}
    parts = [[p for _, p in a.parts] for a in attachments]

    def fill():
        new_parts = [p for _, p in require(model).adapters[name].parts]
        for j, new in enumerate(new_parts):
            factors = [member_parts[j].factors() for member_parts in parts]   # (A, s·B) of each member
            new.lora_A.weight.copy_(torch.cat([a for a, _ in factors], 0))
            new.lora_B.weight.copy_(torch.cat([w * b for w, (_, b) in zip(weights, factors)], 1))
            if new.lora_bias is not None:   # the new scale is 1: Σ w_i s_i b_i
                new.lora_bias.copy_(sum(w * member_parts[j].delta_bias() for w, member_parts in zip(weights, parts)))

    _new_adapter(model, config_from_dict(data), name, fill)
    return name
