"""The public API on a model: attach, detach, activate, summary, trainable_parameters."""
from __future__ import annotations

import re

import torch
from torch import nn

from . import compose
from .config import MethodConfig, closest
from .errors import PeftlabError
from .layouts import layout_for
from .registry import spec_for
from .state import HOME, Attachment, Controller, controller_of, home_of
from .surgery import Slot, add_part, ensure_slot, get_module, named_base_modules, named_base_parameters
from .target import AttachTarget

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def attach(model: nn.Module, config: MethodConfig, name: str = "default", *, activate: bool = True,
           trainable: bool = True) -> nn.Module:
    """Attach a method in place under `name`; freeze everything else. Returns the model.

    On any error the model is left exactly as it was.
    """
    spec = spec_for(config)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PeftlabError(f"adapter name {name!r} must be letters, digits, '_' or '-' (not starting with a digit)")
    controller = controller_of(model)
    if controller is not None and name in controller.adapters:
        raise PeftlabError(f"an adapter named '{name}' is already attached; detach it first or pick another name")
    fresh = controller is None
    if fresh:
        controller = _install_controller(model)
    attachment = Attachment(name, config, trainable=trainable)
    try:
        target = AttachTarget(model, controller, attachment, trainable)
        spec.build(target, **config.build_kwargs())
        target.apply_generic_switches(config)
        controller.adapters[name] = attachment
        attachment.learned = [p for p in attachment_parameters(model, name) if p.requires_grad]
    except BaseException:
        controller.adapters.pop(name, None)
        attachment.journal.rollback()
        if fresh:
            _remove_controller(model)
        raise
    if activate:
        controller.training = None     # a newly attached adapter trains, alone, as before
        set_active(model, (name,))
    else:
        controller.sync_training(model)
    return model


def detach(model: nn.Module, name: str | None = None) -> nn.Module:
    """Remove an adapter; after the last one the model is bit-identical to before the first attach."""
    controller = _require(model)
    name = _pick(controller, name)
    attachment = controller.adapters.pop(name)
    if any(getattr(p, "merged", False) for _, p in attachment.parts):
        from .merging import unmerge
        controller.adapters[name] = attachment
        unmerge(model, name)
        controller.adapters.pop(name)
    attachment.journal.rollback()
    if controller.training is not None:
        controller.training = tuple(n for n in controller.training if n != name) or None
    set_active(model, compose.without(controller.active, name))
    if not controller.adapters:
        _remove_controller(model)
    return model


def set_active(model: nn.Module, block) -> None:
    """Make `block` (a tuple of names, or a composition) the active setup on every slot.

    Checks names and nesting first; attaches the mixing adapters a Fuse / WeightedSum needs (and the
    new adapter of an Average) on first use. On any error the active setup is unchanged."""
    controller = _require(model)
    block = compose.expand_mixer(compose.normalize(block), controller)
    for n in compose.member_names(block):
        if n not in controller.adapters:
            raise PeftlabError(f"no adapter named '{n}'{closest(n, controller.adapters)}; "
                               f"attached: {', '.join(controller.adapters) or 'none'}")
    compose.check(block, controller)
    block = compose.prepare(model, block)
    block = (block,) if isinstance(block, str) else block
    controller.active = block
    names = _names_in(block)
    controller.active_names = names
    for _, module in model.named_modules():
        if isinstance(module, Slot):
            module.active = tuple(n for n in names if n in module.parts)
            module.block = block
    if controller.adapters:
        compose.install(model)   # routing hooks for `adapter_names=[...]` and row blocks
    else:
        compose.uninstall(model)
    controller.sync_training(model)


def activate(model: nn.Module, *names) -> nn.Module:
    """Activate adapters: `activate(model, "a")`, `activate(model, "a", "b")` (applied in order),
    or a composition block such as `activate(model, pl.Stack("lang", "task"))`."""
    block = names[0] if len(names) == 1 and not isinstance(names[0], str) else tuple(names)
    set_active(model, block)
    return model


def train_adapter(model: nn.Module, *names, activate: bool = True) -> nn.Module:
    """Train exactly these adapters (activating them unless the active setup already runs them, or
    `activate=False`), as AdapterHub's `train_adapter` does; adapters loaded frozen become trainable.
    With no names, go back to the default rule: the active adapters train."""
    controller = _require(model)
    if not names:
        controller.training = None
        controller.sync_training(model)
        return model
    picked = tuple(_pick(controller, n) for n in names)
    for n in picked:
        controller.adapters[n].trainable = True
    if activate and not set(picked) <= set(controller.active_names):
        set_active(model, picked)
    controller.training = picked
    controller.sync_training(model)
    return model


def deactivate(model: nn.Module) -> nn.Module:
    """Run the bare base model (adapters stay attached)."""
    set_active(model, ())
    return model


def adapters(model: nn.Module) -> dict[str, MethodConfig]:
    controller = controller_of(model)
    return {} if controller is None else {n: a.config for n, a in controller.adapters.items()}


def attachment_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters an adapter owns (its parts and shared tensors), deduplicated, in a stable order."""
    attachment = _require(model).adapters.get(name) or _missing(model, name)
    params, seen = [], set()
    home = home_of(model)
    groups = [home[name].parameters()] if home is not None and name in home else []
    groups += [part.parameters() for _, part in attachment.parts]
    for group in groups:
        for p in group:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def adapter_parameter_count(model: nn.Module, name: str) -> int:
    """Parameters an adapter trains: its own plus base tensors it trains in place, each counted once."""
    attachment = _require(model).adapters[name]
    claimed = [p for n, p in named_base_parameters(model) if n in set(attachment.claimed)]
    unique = {id(p): p for p in [*attachment_parameters(model, name), *claimed]}
    return sum(p.numel() for p in unique.values())


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) where total = base parameters + added parameters, each tensor counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def base_parameter_count(model: nn.Module) -> int:
    controller = controller_of(model)
    if controller is not None:
        return controller.base_count
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def summary(model: nn.Module) -> str:
    """A table: each adapter, its method, where it sits, its trainable parameters and % of the base."""
    controller = controller_of(model)
    base = base_parameter_count(model)
    rows = [("adapter", "method", "where", "params", "% of base", "active")]
    if controller is not None:
        active = set(_names_in(controller.active))
        for name, att in controller.adapters.items():
            count = adapter_parameter_count(model, name)
            where = _where(att)
            rows.append((name, att.config.method, where, f"{count:,}", f"{100 * count / base:.3f}",
                         "yes" if name in active else ""))
    trainable, total = trainable_parameters(model)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"trainable {trainable:,} of {total:,} ({100 * trainable / base:.3f}% of the base's {base:,})")
    return "\n".join(lines)


# --- helpers ---------------------------------------------------------------------------------------

def _where(attachment: Attachment) -> str:
    """'24 modules', '12 attention layers', '1 input prompts' ... and base tensors trained in place."""
    counts = ([(len(attachment.slots), "modules")] if attachment.slots else []) + \
        [(len(paths), kind) for kind, paths in attachment.acts_on.items()]
    where = ", ".join(f"{n} {kind[:-1] if n == 1 and kind.endswith('s') else kind}" for n, kind in counts)
    where = where or "nothing"
    return where + (f" + {len(attachment.claimed)} base tensors" if attachment.claimed else "")


def _install_controller(model: nn.Module) -> Controller:
    controller = Controller(model, layout_for(model))
    model.__dict__["_peftlab"] = controller
    for _, param in named_base_parameters(model):
        param.requires_grad_(False)
    return controller


def _remove_controller(model: nn.Module) -> None:
    controller = model.__dict__.pop("_peftlab", None)
    if HOME in model._modules:
        del model._modules[HOME]
    if controller is not None:
        for name, param in named_base_parameters(model):
            param.requires_grad_(controller.original_flags.get(name, param.requires_grad))


def _require(model: nn.Module) -> Controller:
    controller = controller_of(model)
    if controller is None:
        raise PeftlabError("this model has no peftlab adapters attached")
    return controller


def _missing(model, name):
    controller = _require(model)
    raise PeftlabError(f"no adapter named '{name}'{closest(str(name), controller.adapters)}; "
                       f"attached: {', '.join(controller.adapters)}")


def _pick(controller: Controller, name: str | None) -> str:
    if name is None:
        if len(controller.adapters) != 1:
            raise PeftlabError(f"several adapters attached ({', '.join(controller.adapters)}): name one")
        return next(iter(controller.adapters))
    if name not in controller.adapters:
        raise PeftlabError(f"no adapter named '{name}'{closest(str(name), controller.adapters)}; "
                           f"attached: {', '.join(controller.adapters)}")
    return name


def _names_in(block) -> tuple[str, ...]:
    return compose.all_names(compose.normalize(block))
