"""`Average`: a new adapter whose weights are a weighted average of same-shaped adapters' weights.

Every tensor is averaged ("linear"), except for peftlab's LoRA, where averaging A and B separately would not
average the updates (B1 A1 + B2 A2 != (B1 + B2)(A1 + A2) / 2 ...). There ("delta_w", its default) the new
adapter is a LoRA of rank r1 + ... + rn with A = [A_1; ...; A_n] and B = [w_1 s_1 B_1, ..., w_n s_n B_n]
(s_i = alpha_i / r_i, scale 1), so that its update is exactly sum_i w_i ΔW_i. Base tensors trained in place
(a task head) are shared by the members already and are kept as they are.

AdapterHub's `average_adapter` strategies (model_mixin.py:1693-1815, methods/lora.py:605-727) are the other
`combine` values: "linear" (its default, and the default here for its LoRA, `pl.adapterhub.LoRA`),
"linear_negate_b" (its "lora_linear_only_negate_b": A weighted by |w|, B by w) and "svd" (its
"lora_delta_w_svd": rank `svd_rank` factors of Σ w_i ΔW_i). `normalize_weights` divides the weights by
their sum first, as AdapterHub does by default.
"""
from __future__ import annotations

import torch

from .core import adapter_state, attach, detach, require
from .errors import PeftlabError
from .methods.lora import LoRAPart
from .registry import config_from_dict

COMBINES = ("delta_w", "linear", "linear_negate_b", "svd")
LORA_METHODS = ("lora", "adapterhub_lora")
# keys AdapterHub's average_adapter does not compare (model_mixin.py:1746-1752): they only seed the init
ADAPTERHUB_IGNORED = ("dropout", "init_weights", "init", "init_std")


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


def average(model, members, weights, name: str, *, combine: str | None = None, normalize_weights: bool = False,
            svd_rank: int | None = None) -> str:
    """Attach adapter `name` = the members averaged in weight space with `weights`; returns `name`.
    `combine`: "delta_w" (peftlab's LoRA default), "linear" (every other method's, and AdapterHub's LoRA's),
    "linear_negate_b" or "svd" (LoRA only; "svd" needs `svd_rank`)."""
    members, weights = list(members), _weights(weights, len(members), normalize_weights)
    method = _check_same(model, members[:1])[0].config.method
    combine = combine or ("delta_w" if method == "lora" else "linear")
    if combine not in COMBINES:
        raise PeftlabError(f"Average combine {combine!r} is not one of {list(COMBINES)}")
    if combine != "linear" and method not in LORA_METHODS:
        raise PeftlabError(f"cannot average {method} adapters with combine={combine!r}: only LoRA has strategies "
                           f"other than 'linear'")
    if (svd_rank is not None) != (combine == "svd") or (svd_rank is not None and svd_rank < 1):
        raise PeftlabError(f"Average: combine='svd' takes a positive svd_rank, other strategies none "
                           f"(got combine={combine!r}, svd_rank={svd_rank!r})")
    if combine == "delta_w":
        if method != "lora":
            raise PeftlabError(f"combine='delta_w' needs peftlab's LoRA (pl.LoRA); '{members[0]}' is {method}")
        return _average_lora(model, members, weights, name)
    if combine == "svd":
        return _average_svd(model, members, weights, name, svd_rank)
    return _average_linear(model, members, weights, name, negate_b=combine == "linear_negate_b")


def _weights(weights, n: int, normalize: bool) -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise PeftlabError(f"Average weights {weights} must have {n} entries")
    if normalize:
        total = sum(weights)
        if total == 0:
            raise PeftlabError(f"Average weights {weights} sum to 0 and cannot be normalized")
        weights = [w / total for w in weights]
    return weights


def _average_linear(model, members, weights, name, negate_b: bool) -> str:
    """Each tensor Σ w_i t_i; with `negate_b`, LoRA's A tensors Σ |w_i| A_i (lora.py:640-660)."""
    first = require(model).adapters[members[0]].config
    attachments = _check_same(model, members, ADAPTERHUB_IGNORED if first.compat == "adapterhub" else ())
    states = [adapter_state(model, m) for m in members]
    for key, tensor in states[0].items():
        for member, state in zip(members[1:], states[1:]):
            if key not in state or state[key].shape != tensor.shape:
                raise PeftlabError(f"cannot average '{members[0]}' with '{member}': tensor '{key}' differs in shape")

    def fill():
        for key, tensor in adapter_state(model, name).items():
            if not key.startswith("base."):
                factors = [abs(w) for w in weights] if negate_b and ".lora_A" in key else weights
                tensor.copy_(sum(w * state[key].to(tensor.dtype) for w, state in zip(factors, states)))

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


def _average_svd(model, members, weights, name, rank: int) -> str:
    """A = V_r, B = U_r S_r of the SVD of Σ w_i ΔW_i. AdapterHub (lora.py:684-727) sums its members' B A
    *unscaled* and keeps alpha, so its new update is scaled by alpha / svd_rank; peftlab's LoRA sums the
    scaled updates and gives the new adapter scale 1 (alpha = r = svd_rank)."""
    attachments = _check_same(model, members, ignore=("dropout", "init_weights"))
    parts = [[p for _, p in a.parts] for a in attachments]
    unsupported = [type(p).__name__ for p in parts[0] if type(p) is not LoRAPart or p.lora_bias is not None]
    if unsupported:
        raise PeftlabError(f"combine='svd' needs plain LoRA layers (B A); '{members[0]}' has a {unsupported[0]} "
                           f"(AdapterHub refuses it on GPT-2's fused attention as well)")
    sizes = [min(p.lora_A.weight.shape[1], p.lora_B.weight.shape[0]) for p in parts[0]]
    too_big = [size for size in sizes if rank > size]
    if too_big:
        raise PeftlabError(f"combine='svd': svd_rank {rank} exceeds a layer's update size ({too_big[0]} features)")
    first = attachments[0].config
    exact = first.method == "lora"
    data = {**first.to_dict(), "r": rank, **({"alpha": float(rank)} if exact else {})}

    def fill():
        new_parts = [p for _, p in require(model).adapters[name].parts]
        for j, new in enumerate(new_parts):
            delta = sum(w * _delta(member_parts[j], exact) for w, member_parts in zip(weights, parts))
            u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
            new.lora_A.weight.copy_(vh[:rank])
            new.lora_B.weight.copy_(u[:, :rank] * s[:rank])

    _new_adapter(model, config_from_dict(data), name, fill)
    return name


def _delta(part, scaled: bool) -> torch.Tensor:
    a, b = part.lora_A.weight, part.lora_B.weight
    return (b * part.scaling if scaled else b) @ a
