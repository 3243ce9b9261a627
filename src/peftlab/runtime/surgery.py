"""Model surgery with an undo journal, and the model's modules under their original names.

Every change peftlab makes to a model goes through a `Journal`, which records how to undo it. A failed
attach rolls its journal back; `detach` rolls back an attachment's journal. Either way the model ends
exactly as it was: same module objects, same parameters, bit for bit.
"""
from __future__ import annotations

from typing import Callable, Iterator

from torch import nn

from .host import Activation, Host
from .parts import ROLES, Part


class Journal:
    """An undo log: `record(fn)` after each change; `rollback()` undoes them newest first."""

    def __init__(self):
        self._undo: list[Callable[[], None]] = []

    def record(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def record_last(self, undo: Callable[[], None]) -> None:
        """An undo that runs after every other (e.g. detaching adapters loaded for this one)."""
        self._undo.insert(0, undo)

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()


# --- module paths --------------------------------------------------------------------------------

def get_module(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split(".") if path else []:
        module = module.base_layer if isinstance(module, Host) and part != "base_layer" else module
        module = getattr(module, part)
    return module


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(get_module(model, parent_path), attr, new)


def base_module(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, Host) else module


def named_base_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The model's modules under their original paths: Hosts are seen through, parts are skipped."""
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


def hosts(model: nn.Module) -> Iterator[Host]:
    return (m for m in model.modules() if isinstance(m, Host))


# --- journaled operations ------------------------------------------------------------------------

def ensure_host(model, path: str, stack, layer, activation: Activation, journal: Journal) -> Host:
    """The Host at `path`, wrapping the module there first if needed. Undo unwraps it once empty."""
    current = get_module(model, path)
    if not isinstance(current, Host):
        current = Host(current, path, stack, layer, activation)
        set_module(model, path, current)
    host = current

    def unwrap_if_empty():
        if len(host.parts) == 0 and get_module(model, path) is host:
            set_module(model, path, host.base_layer)

    journal.record(unwrap_if_empty)
    return host


def add_part(host: Host, adapter: str, part: Part, journal: Journal) -> None:
    if part.role not in ROLES:
        raise ValueError(f"part role must be one of {ROLES}, got {part.role!r}")
    if adapter not in host.parts:
        host.parts[adapter] = nn.ModuleList()
    host.parts[adapter].append(part)

    def remove():
        host.parts[adapter] = nn.ModuleList([p for p in host.parts[adapter] if p is not part])
        if len(host.parts[adapter]) == 0:
            del host.parts[adapter]

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
