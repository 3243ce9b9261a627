"""Model surgery with an undo journal.

Every change peftlab makes to a model goes through a `Journal`, which records how to undo it. A failed
attach rolls its journal back; `detach` rolls back an attachment's journal. Either way the model ends
exactly as it was: same module objects, same parameters, bit for bit.

A `Slot` wraps one base module and keeps it as `base_layer`. Method parts placed at the slot take one
of four roles around the base call:  input (x -> x'), add (x -> delta added to the output),
output (y -> y'), tap (sees x, returns nothing; used to carry a sublayer's input to a parallel branch),
and mix (composition only: mixes several adapters' outputs, see compose/evaluate.py).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from .errors import PeftlabError

ROLES = ("tap", "input", "add", "output", "mix")


class Journal:
    """An undo log: `record(fn)` after each change; `rollback()` undoes them newest first."""

    def __init__(self):
        self._undo: list[Callable[[], None]] = []

    def record(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()


class Slot(nn.Module):
    """A wrapper around `base_layer` that runs the parts of the active adapters around it."""

    def __init__(self, base_layer: nn.Module, path: str, stack: str | None, layer: int | None):
        super().__init__()
        self.base_layer = base_layer
        self.parts = nn.ModuleDict()          # adapter name -> ModuleList of parts
        self.path, self.stack, self.layer = path, stack, layer
        self.active: tuple[str, ...] = ()     # set by activate(); read-only in forward
        self.block: object = ()               # the active block (a tuple of names, or a composition)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)  # transformers reads e.g. `.weight.dtype` of wrapped layers

    def live_parts(self) -> list[nn.Module]:
        out = []
        for name in self.active:
            if name in self.parts:
                out.extend(p for p in self.parts[name] if not getattr(p, "merged", False) and not p.skipped(self))
        return out

    def forward(self, *args, **kwargs):
        if type(self.block) is not tuple or _compose_routing.current() is not None:
            return _compose_evaluate.run_composed(self, args, kwargs)   # blocks and per-row routing
        parts = self.live_parts()
        if not parts:
            return self.base_layer(*args, **kwargs)
        x = _first_input(args, kwargs)
        x_in = run_pre(parts, x)
        if x_in is not x:
            args, kwargs = _replace_first_input(args, kwargs, x_in)
        out = self.base_layer(*args, **kwargs)
        h = run_post(parts, x_in, out[0] if isinstance(out, tuple) else out)
        return (h, *out[1:]) if isinstance(out, tuple) else h


def run_pre(parts, x):
    """The module's input: taps see it, then input parts change it, in order."""
    for part in parts:
        if part.role == "tap":
            part(x)
    for part in parts:
        if part.role == "input":
            x = part(x)
    return x


def run_post(parts, x_in, h):
    """The module's output: additive parts add f(x_in), then output parts map h -> h', in order. An
    additive part may offer `add_to(h, x)`, the same sum computed in fewer passes (e.g. inside a GEMM)."""
    for part in parts:
        if part.role == "add":
            h = part.add_to(h, x_in) if hasattr(part, "add_to") else h + part(x_in)
    for part in parts:
        if part.role == "output":
            h = part(h)
    return h


class Part(nn.Module):
    """Base of the modules placed in a Slot. `role` says where it acts (see module doc)."""

    role: str = "output"

    def skipped(self, slot: Slot) -> bool:
        """True to sit this forward out (AdapterDrop). Must not change any state."""
        return False


class Handoff:
    """One tensor passed from one part to another within the same forward: a tap on a sublayer's input
    to the part on its output, the key projection's output to the value part, an attention hook's term
    to the part after W_o. `take` empties it, so a tensor never leaks into a later call."""

    def __init__(self, missing: str):
        self.missing, self.value = missing, None   # `missing`: the error if taken before it was put

    def put(self, tensor: torch.Tensor) -> None:
        self.value = tensor

    def take(self, required: bool = True) -> torch.Tensor | None:
        value, self.value = self.value, None
        if value is None and required:
            raise PeftlabError(self.missing)
        return value


class HandoffTap(Part):
    """Puts what its slot sees into a Handoff and changes nothing: role "tap" sees the module's input,
    role "output" its output (returned unchanged)."""

    def __init__(self, handoff: Handoff, role: str = "tap"):
        super().__init__()
        self.handoff, self.role = handoff, role

    def forward(self, h):
        self.handoff.put(h)
        return h if self.role == "output" else None


def _first_input(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("hidden_states", kwargs.get("input"))


def _replace_first_input(args, kwargs, x):
    if args:
        return (x, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else "input"
    return args, {**kwargs, key: x}


# --- module paths --------------------------------------------------------------------------------

def get_module(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split(".") if path else []:
        module = module.base_layer if isinstance(module, Slot) and part != "base_layer" else module
        module = getattr(module, part)
    return module


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(get_module(model, parent_path), attr, new)


def base_module(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, Slot) else module


def named_base_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The model's modules under their original paths: Slots are seen through, parts are skipped."""
    yield prefix, base_module(model)
    for name, child in base_module(model).named_children():
        if name == "peftlab_adapters" and not prefix:
            continue
        yield from named_base_modules(child, f"{prefix}.{name}" if prefix else name)


def named_base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Base parameters under their original names (as `state_dict` had them before any attach)."""
    for path, module in named_base_modules(model):
        for name, param in base_module(module).named_parameters(recurse=False):
            yield (f"{path}.{name}" if path else name), param


# --- journaled operations ------------------------------------------------------------------------

def ensure_slot(model, path: str, stack, layer, journal: Journal) -> Slot:
    """The Slot at `path`, wrapping the module there first if needed. Undo unwraps it once empty."""
    current = get_module(model, path)
    if not isinstance(current, Slot):
        current = Slot(current, path, stack, layer)
        set_module(model, path, current)
    slot = current

    def unwrap_if_empty():
        if len(slot.parts) == 0 and get_module(model, path) is slot:
            set_module(model, path, slot.base_layer)

    journal.record(unwrap_if_empty)
    return slot


def add_part(slot: Slot, adapter: str, part: Part, journal: Journal) -> None:
    if part.role not in ROLES:
        raise ValueError(f"part role must be one of {ROLES}, got {part.role!r}")
    if adapter not in slot.parts:
        slot.parts[adapter] = nn.ModuleList()
    slot.parts[adapter].append(part)

    def remove():
        slot.parts[adapter] = nn.ModuleList([p for p in slot.parts[adapter] if p is not part])
        if len(slot.parts[adapter]) == 0:
            del slot.parts[adapter]

    journal.record(remove)


def add_hook(register: Callable, fn: Callable, journal: Journal, **kwargs) -> None:
    """`register` is e.g. `module.register_forward_pre_hook`; the hook is removed on undo."""
    handle = register(fn, **kwargs)
    journal.record(handle.remove)


def set_attr(obj, name: str, value, journal: Journal) -> None:
    """Set a plain attribute, restoring the old value (or absence) on undo."""
    missing = object()
    old = obj.__dict__.get(name, missing)
    setattr(obj, name, value)

    def restore():
        if old is missing:
            obj.__dict__.pop(name, None)
        else:
            setattr(obj, name, old)

    journal.record(restore)


# Composition runs inside Slot.forward; imported last because compose builds on this module.
from .compose import evaluate as _compose_evaluate, routing as _compose_routing  # noqa: E402
