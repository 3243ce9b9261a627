"""AdapterHub's names for the tensors it keeps outside a layer's adapter modules (adapters 1.3): a
Compacter's shared PHM tensors (`<base>.shared_parameters.<name>.*`, model_mixin.py:736-755), the
invertible adapter (`<base>[.encoder].invertible_adapters.<name>.*`, model_mixin.py:58-103 with the
models' mixins) and the prefix-tuning pool (`<base>.prefix_tuning.prefix_tunings.<name>.<location>.*`,
prefix_tuning.py:145-213, saved once more under every attention module's `prefix_tuning.pool`).

`<base>` is the model's base model (`bert` in BertFor..., `transformer` in GPT2LMHeadModel, `model` in
BART and Llama); T5ForConditionalGeneration is its own base model, so there `<base>` is empty — and
AdapterHub's saver, which looks for `.shared_parameters.` with a leading dot (loading.py:392), never
writes a T5 Compacter's shared tensors.
"""
from __future__ import annotations

import re

from torch import nn

from .targeting import resolve_slot

SHARED, INVERTIBLE, PREFIX_POOL = "shared_parameters", "invertible_adapters", "prefix_tuning.prefix_tunings"
OWNED = (SHARED, INVERTIBLE, PREFIX_POOL)
_OWNED_KEY = re.compile(rf"(?:^|\.)({'|'.join(re.escape(m) for m in OWNED)})\.(.+)$")
_SHARED_BLOCKS = re.compile(r"^phm_W\.(down|up)\.(W(?:_left|_right)?)$")


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def base_owner(model: nn.Module) -> str:
    """The path of the model's base model, where AdapterHub keeps shared tensors ('' for T5)."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def owners(model: nn.Module, layout) -> dict[str, str]:
    """Marker -> the module path holding it in this model (invertible adapters: the encoder's, on T5/BART)."""
    base = base_owner(model)
    encoder = join(base, "encoder") if layout.name in ("t5", "bart") else base
    return {SHARED: base, INVERTIBLE: encoder, PREFIX_POOL: base}


def normalize_owned(key: str, owner_of: dict[str, str]) -> str | None:
    """A saved key under one of the markers, spelled with this model's path (None: not such a key)."""
    match = _OWNED_KEY.search(key)
    if match is None:
        return None
    return join(owner_of[match.group(1)], match.group(1), match.group(2))


def shared_phm_names(state: dict, owner: str, saved_name: str) -> dict[str, str]:
    """AdapterHub name -> adapter-state key of the shared PHM rule and blocks in the adapter's home."""
    out = {}
    for key in state:
        if not key.startswith("home.phm_"):
            continue
        leaf = key[len("home."):]
        if leaf.startswith("phm_rule."):            # phm_rule, or phm_rule_left / phm_rule_right
            name = leaf.split(".", 1)[1]
        else:                                       # home.phm_W.down.W_left -> W_down_left
            match = _SHARED_BLOCKS.match(leaf)
            if match is None:
                continue
            name = f"W_{match.group(1)}{match.group(2)[1:]}"
        out[join(owner, SHARED, saved_name, name)] = key
    return out


def invertible_names(part, state_key_of: dict, owner: str, saved_name: str) -> dict[str, str]:
    """AdapterHub name -> adapter-state key of an invertible adapter's coupling (F.0.weight, s1.2.bias...)."""
    return {join(owner, INVERTIBLE, saved_name, leaf): state_key_of[id(tensor)]
            for leaf, tensor in part.coupling.named_parameters()}


def prefix_names(model: nn.Module, layout, state: dict, owner: str, saved_name: str) -> dict[str, tuple[str, bool]]:
    """AdapterHub name -> (adapter-state key, optional) of the prefix pool: under the base model, and again
    (optional when read) under every attention module, self and cross, which AdapterHub saves too."""
    leaves = {key[len("home.prefix_pool."):]: key for key in state if key.startswith("home.prefix_pool.")}
    if not leaves:
        return {}
    out = {join(owner, PREFIX_POOL, saved_name, leaf): (key, False) for leaf, key in leaves.items()}
    slots = ["attn"] + (["cross_attn"] if "cross_attn" in layout.slot_names() else [])
    for slot in slots:
        stacks = ("decoder",) if slot == "cross_attn" else None
        for site in resolve_slot(model, layout, slot, stacks=stacks):
            out.update({join(site.path, "prefix_tuning.pool.prefix_tunings", saved_name, leaf): (key, True)
                        for leaf, key in leaves.items()})
    return out
