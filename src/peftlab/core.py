"""The public API on a model: attach, detach, activate, train_adapter, summary, counts.

Activation only checks a setup (composition.py) and publishes it: every Host of the model reads the one
`Activation` the Controller holds. Creating what a setup needs (a fusion, a multi-adapter, an average)
is an explicit `attach`.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from . import calls
from .blocks import Average, Mixing, all_names, normalize, without
from .composition import checked
from .config import MethodConfig, closest
from .errors import PeftlabError
from .layouts import layout_for
from .merging import unmerge
from .registry import config_from_dict, spec_for
from .runtime import named_base_modules, named_base_parameters
from .state import CONTROLLER, HOME, Attachment, Controller, controller_of, home_of
from .target import AttachTarget

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_MODULE_ATTRIBUTES = frozenset(dir(nn.Module()))   # methods and instance attributes (training, ...)


def attach(model: nn.Module, config, name: str | None = None, *, activate: bool = True,
           trainable: bool = True) -> nn.Module:
    """Attach a method in place under `name` (default "default"; a Fuse / WeightedSum block: its own
    name); freeze everything else. Returns the model. On any error the model is left exactly as it was.

    `config` is a method config, or a Fuse / WeightedSum block, which attaches the adapter holding its
    mixing weights (AdapterHub's `add_adapter_fusion`)."""
    if isinstance(config, Average):
        raise PeftlabError("attach an Average with pl.attach(model, pl.Average(...)) (peftlab.io.attach builds it)")
    if isinstance(config, Mixing):
        name = name or config.name
        config = config_from_dict(config.mixer_config())
    name = "default" if name is None else name
    spec = spec_for(config)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PeftlabError(f"adapter name {name!r} must be letters, digits, '_' or '-' (not starting with a digit)")
    if name in _MODULE_ATTRIBUTES:   # adapters live in nn.ModuleDicts, which refuse a Module attribute's name
        raise PeftlabError(f"adapter name {name!r} is the name of a torch Module method or attribute; pick another")
    controller = controller_of(model)
    if controller is not None and name in controller.adapters:
        raise PeftlabError(f"an adapter named '{name}' is already attached; detach it first or pick another name")
    fresh = controller is None
    controller = _install_controller(model) if fresh else controller
    attachment = Attachment(name, config, trainable=trainable)
    try:
        target = AttachTarget(model, controller, attachment, trainable)
        spec.build(target, **config.build_kwargs())
        target.apply_generic_switches(config)
        controller.adapters[name] = attachment
        attachment.learned = [p for p in attachment_parameters(model, name) if p.requires_grad]
    except BaseException as err:
        controller.adapters.pop(name, None)
        attachment.journal.rollback()
        if fresh:
            _remove_controller(model)
        if isinstance(err, RuntimeError) and "allocate" in str(err):   # torch's out-of-memory, CPU or GPU
            raise PeftlabError(f"{type(config).__name__}: its tensors do not fit in memory "
                               f"({str(err).splitlines()[0][:160]}); the model is unchanged") from None
        raise
    if activate:
        controller.training = None     # a newly attached adapter trains, alone, as before
        set_active(model, (name,))
    else:
        controller.sync_training(model)
    return model


def detach(model: nn.Module, name: str | None = None) -> nn.Module:
    """Remove an adapter; after the last one the model is bit-identical to before the first attach."""
    controller = require(model)
    name = pick(controller, name)
    if any(p.merged for _, p in controller.adapters[name].parts):
        unmerge(model, name)
    attachment = controller.adapters.pop(name)
    attachment.journal.rollback()
    if controller.training is not None:
        controller.training = tuple(n for n in controller.training if n != name) or None
    if not controller.adapters:
        _remove_controller(model)
        return model
    _publish(model, controller, without(controller.active, name))
    return model


def set_active(model: nn.Module, block) -> None:
    """Make `block` (a tuple of names, or a composition) the active setup. It is checked first (names
    attached, nesting allowed, mixing adapters attached); on any error the active setup is unchanged."""
    controller = require(model)
    _publish(model, controller, checked(block, controller))


def _publish(model: nn.Module, controller: Controller, block) -> None:
    block = (block,) if isinstance(block, str) else block
    controller.activation.publish(block, all_names(normalize(block)))
    controller.sync_training(model)


def activate(model: nn.Module, *names) -> nn.Module:
    """Activate adapters: `activate(model, "a")`, `activate(model, "a", "b")` (applied in order),
    or a composition block such as `activate(model, pl.Stack("lang", "task"))`."""
    block = names[0] if len(names) == 1 and not isinstance(names[0], str) else tuple(names)
    set_active(model, block)
    return model


def deactivate(model: nn.Module) -> nn.Module:
    """Run the bare base model (adapters stay attached)."""
    set_active(model, ())
    return model


def train_adapter(model: nn.Module, *names, activate: bool = True) -> nn.Module:
    """Train exactly these adapters (activating them unless the active setup already runs them, or
    `activate=False`), as AdapterHub's `train_adapter` does; adapters loaded frozen become trainable.
    With no names, go back to the default rule: the active adapters train."""
    controller = require(model)
    if not names:
        controller.training = None
        controller.sync_training(model)
        return model
    picked = tuple(pick(controller, n) for n in names)
    for n in picked:
        controller.adapters[n].trainable = True
    if activate and not set(picked) <= set(controller.active_names()):
        set_active(model, picked)
    controller.training = picked
    controller.sync_training(model)
    return model


def adapters(model: nn.Module) -> dict[str, MethodConfig]:
    controller = controller_of(model)
    return {} if controller is None else {n: a.config for n, a in controller.adapters.items()}


def attachment_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters an adapter owns (its parts and shared tensors), deduplicated, in a stable order."""
    pick(require(model), name)
    attachment = controller_of(model).adapters[name]
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


def adapter_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Stable key -> tensor for everything an adapter owns; a shared tensor appears once. Keys:
    `home.*` (shared tensors), `parts.<module path>.<index>.*`, `base.<parameter>` (trained in place)."""
    attachment = require(model).adapters[name]
    out, seen = {}, set()

    def put(key, tensor):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[key] = tensor

    home = home_of(model)
    if home is not None and name in home:
        for key, tensor in home[name].state_dict(keep_vars=True).items():
            put(f"home.{key}", tensor)
    counters: dict[str, int] = {}
    for path, part in attachment.parts:
        index = counters[path] = counters.get(path, -1) + 1
        for key, tensor in part.state_dict(keep_vars=True).items():
            put(f"parts.{path}.{index}.{key}", tensor)
    claimed = set(attachment.claimed)
    for param_name, param in named_base_parameters(model):
        if param_name in claimed:
            put(f"base.{param_name}", param)
    return out


def adapter_parameter_count(model: nn.Module, name: str) -> int:
    """Parameters an adapter trains: its own plus base tensors it trains in place, each counted once."""
    attachment = require(model).adapters[name]
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
    """A table: each adapter, its method (and `compat`), where it sits, its trainable parameters and %
    of the base."""
    controller = controller_of(model)
    base = base_parameter_count(model)
    rows = [("adapter", "method", "where", "params", "% of base", "active")]
    if controller is not None:
        for name, att in controller.adapters.items():
            count = adapter_parameter_count(model, name)
            compat = getattr(att.config, "compat", None)
            method = att.config.method + (f" (compat={compat})" if compat else "")
            rows.append((name, method, _where(att), f"{count:,}", f"{100 * count / base:.3f}",
                         "yes" if controller.is_active(name) else ""))
    trainable, total = trainable_parameters(model)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"trainable {trainable:,} of {total:,} ({100 * trainable / base:.3f}% of the base's {base:,})")
    return "\n".join(lines)


def require(model: nn.Module) -> Controller:
    """The model's Controller; one line of error when nothing is attached."""
    controller = controller_of(model)
    if controller is None:
        raise PeftlabError("this model has no peftlab adapters attached")
    return controller


def pick(controller: Controller, name: str | None) -> str:
    """`name` checked against what is attached; None picks the only adapter."""
    if name is None:
        if len(controller.adapters) != 1:
            raise PeftlabError(f"several adapters attached ({', '.join(controller.adapters)}): name one")
        return next(iter(controller.adapters))
    if name not in controller.adapters:
        raise PeftlabError(f"no adapter named '{name}'{closest(str(name), controller.adapters)}; "
                           f"attached: {', '.join(controller.adapters)}")
    return name


# --- helpers ---------------------------------------------------------------------------------------

def _where(attachment: Attachment) -> str:
    """'24 modules', '12 attention layers', '1 input prompt' ... and base tensors trained in place."""
    counts = ([(len(attachment.hosts), "modules")] if attachment.hosts else []) + \
        [(len(paths), kind) for kind, paths in attachment.acts_on.items()]
    where = ", ".join(f"{n} {kind[:-1] if n == 1 and kind.endswith('s') else kind}" for n, kind in counts)
    where = where or "nothing"
    return where + (f" + {len(attachment.claimed)} base tensors" if attachment.claimed else "")


def _install_controller(model: nn.Module) -> Controller:
    controller = Controller(model, layout_for(model))
    model.__dict__[CONTROLLER] = controller
    for _, param in named_base_parameters(model):
        param.requires_grad_(False)
    calls.install(model, controller)
    return controller


def _remove_controller(model: nn.Module) -> None:
    controller = model.__dict__.pop(CONTROLLER, None)
    if HOME in model._modules:
        del model._modules[HOME]
    if controller is not None:
        controller.journal.rollback()
        for name, param in named_base_parameters(model):
            param.requires_grad_(controller.original_flags.get(name, param.requires_grad))


__all__ = ["attach", "detach", "activate", "deactivate", "set_active", "train_adapter", "adapters",
           "attachment_parameters", "adapter_state", "adapter_parameter_count", "trainable_parameters",
           "base_parameter_count", "summary", "require", "pick", "named_base_modules", "named_base_parameters"]
