"""Resolve slots, patterns and layer indices to concrete module sites; fail loudly on no match."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from torch import nn

from .config import closest
from .errors import PeftlabError
from .layouts import Layout
from .runtime import base_module, named_base_modules


@dataclass(frozen=True)
class Site:
    """One module where a method acts: which stack and layer it sits in, under which slot."""

    stack: str | None
    layer: int | None
    slot: str
    path: str


@dataclass(frozen=True)
class LayerSelection:
    """Which layers of each stack a method uses; indices may be negative (from the top)."""

    layers: tuple[int, ...] | None = None
    encoder_layers: tuple[int, ...] | None = None
    decoder_layers: tuple[int, ...] | None = None
    leave_out: tuple[int, ...] = ()

    def indices(self, stack: str, n_layers: int) -> list[int]:
        field = f"{stack}_layers" if getattr(self, f"{stack}_layers", None) is not None else "layers"
        chosen = getattr(self, field, None)
        wanted = range(n_layers) if chosen is None else chosen
        dropped = {_index(i, n_layers, stack, "leave_out") for i in self.leave_out}
        return sorted({_index(i, n_layers, stack, field) for i in wanted} - dropped)


def _index(i: int, n: int, stack: str, field: str) -> int:
    if not -n <= i < n:
        raise PeftlabError(f"{field}: layer index {i} is out of range for the {stack} stack of {n} layers")
    return i % n


def find_stacks(model: nn.Module, layout: Layout) -> dict[str, tuple[str, int]]:
    """Stack name -> (path of its ModuleList, number of layers)."""
    found = {}
    for path, module in named_base_modules(model):
        for name, stack in layout.stacks.items():
            if isinstance(module, nn.ModuleList) and (path == stack.path or path.endswith("." + stack.path)):
                found.setdefault(name, (path, len(module)))
    if not found:
        raise PeftlabError(f"{type(model).__name__}: no layer stack of the {layout.name} layout was found")
    return found


def module_exists(model: nn.Module, path: str) -> bool:
    module = model
    for attr in path.split("."):
        module = getattr(base_module(module), attr, None)
        if not isinstance(module, nn.Module):
            return False
    return True


def resolve_slot(model, layout: Layout, slot: str, selection: LayerSelection = LayerSelection(),
                 stacks: Iterable[str] | None = None) -> list[Site]:
    """Every site of `slot` in the selected stacks and layers; raise when the slot is unknown or empty."""
    real = layout.resolve_alias(slot)
    if not layout.model_types:     # the generic layout of an architecture peftlab has no map for
        names = sorted({p.rsplit(".", 1)[-1] for p, m in named_base_modules(model) if p and is_projection(m)})
        raise PeftlabError(f"slot '{slot}': model type '{getattr(model.config, 'model_type', '?')}' has no peftlab "
                           f"layout; place the method by module name (target_modules), e.g. among: "
                           f"{', '.join(names[:12])}")
    if slot not in layout.slot_names():
        raise PeftlabError(
            f"slot '{slot}' does not exist in the {layout.name} layout{closest(slot, layout.slot_names())}; "
            f"available: {', '.join(layout.slot_names())}"
        )
    sites, seen = [], set()
    found = find_stacks(model, layout)
    for stack in ("encoder", "decoder"):
        if getattr(selection, f"{stack}_layers", None) and stack not in found:
            raise PeftlabError(f"{stack}_layers: this model has no {stack} stack (its stacks: {', '.join(found)}); "
                               f"use layers")
    for stack_name, (stack_path, n_layers) in found.items():
        if stacks is not None and stack_name not in stacks:
            continue
        candidates = layout.stacks[stack_name].slots.get(real, ())
        for layer in selection.indices(stack_name, n_layers):
            for rel in candidates:
                path = f"{stack_path}.{layer}.{rel}"
                if path not in seen and module_exists(model, path):
                    seen.add(path)
                    sites.append(Site(stack_name, layer, slot, path))
    if not sites:
        raise PeftlabError(f"slot '{slot}' matched no module in the selected stacks and layers of this model")
    return sites


def stack_position(model, layout: Layout, path: str) -> tuple[str | None, int | None]:
    """(stack, layer) of a module path, or (None, None) outside the layer stacks."""
    for name, (stack_path, _) in find_stacks(model, layout).items():
        if path.startswith(stack_path + "."):
            return name, int(path[len(stack_path) + 1:].split(".")[0])
    return None, None


def pattern_matches(pattern: str, path: str) -> bool:
    """A pattern is a module-name suffix (`q`, `SelfAttention.q`) or a full-path regex."""
    if path == pattern or path.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, path) is not None
    except re.error:
        return False


def resolve_patterns(model, layout: Layout, patterns: Iterable[str], accept: Callable[[nn.Module], bool],
                     selection: LayerSelection = LayerSelection()) -> list[Site]:
    """Sites of modules matching any pattern (and `accept`); each pattern must match something."""
    candidates = [(p, m) for p, m in named_base_modules(model) if p and accept(m)]
    sites, hit = [], set()
    allowed = {}
    for stack_name, (stack_path, n_layers) in find_stacks(model, layout).items():
        allowed[stack_name] = set(selection.indices(stack_name, n_layers))
    for pattern in patterns:
        if pattern == ALL_LINEAR:
            matched = [p for p, m in candidates if not _is_output_layer(model, layout, p, m)]
        else:
            matched = [p for p, _ in candidates if pattern_matches(pattern, p)]
        if not matched:
            names = sorted({p.rsplit(".", 1)[-1] for p, _ in candidates})
            raise PeftlabError(f"pattern '{pattern}' matched no module{closest(pattern, names)}; "
                               f"module names here: {', '.join(names[:20])}")
        for path in matched:
            stack, layer = stack_position(model, layout, path)
            if path in hit or (stack is not None and layer not in allowed.get(stack, ())):
                continue
            hit.add(path)
            sites.append(Site(stack, layer, "pattern", path))
    if not sites:
        raise PeftlabError(f"patterns {list(patterns)} matched no module in the selected layers")
    return sites


ALL_LINEAR = "all-linear"    # HF PEFT's name for every linear layer but the output layer


def _is_output_layer(model, layout: Layout, path: str, module: nn.Module) -> bool:
    """The layer that produces the logits: the LM head (tied to the embeddings or not) or a task head."""
    name = path.rsplit(".", 1)[-1]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = path.split(".")[0] in layout.heads or name in layout.heads
    return base_module(module) is output or path == layout.lm_head or head


def is_conv1d(module: nn.Module) -> bool:
    return type(base_module(module)).__name__ == "Conv1D"


def is_projection(module: nn.Module) -> bool:
    module = base_module(module)
    return isinstance(module, nn.Linear) or is_conv1d(module)


def feature_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear-like module, else None."""
    module = base_module(module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return tuple(module.weight.shape)  # Conv1D stores (in, out)
    return None
