"""Composition: several adapters on one model, combined per layer or routed per row.

    pl.activate(model, pl.Stack("lang_en", "task"))             # apply in sequence (MAD-X)
    pl.activate(model, pl.Fuse("rte", "mrpc"))                   # AdapterFusion (trains fusion only)
    pl.activate(model, pl.WeightedSum("rte", "mrpc"))            # jiant multi-adapter
    pl.activate(model, pl.ParallelBlock("a", "b"))               # each on its own copy of the batch
    pl.activate(model, pl.BatchSplit("a", "b", sizes=[2, 3]))    # rows to adapters
    model(**batch, adapter_names=["a", "b", "__base__"])          # per-example routing, also in generate()
    pl.activate(model, pl.Average("a", "b", weights=[.5, .5]))   # a new adapter in weight space

`set_active` (core.py) normalizes and checks a block here, attaches what it needs (`prepare`), and the
Slots run it (evaluate.py). See docs/composition.md.
"""
from __future__ import annotations

from ..errors import PeftlabError
from . import mixers, routing
from .average import average
from .blocks import BASE, Average, BatchSplit, Block, Fuse, ParallelBlock, Stack, WeightedSum, _Mixing, all_names, \
    check_nesting, member_names, normalize, walk, without
from .routing import install, route, uninstall

__all__ = ["Stack", "Fuse", "WeightedSum", "ParallelBlock", "BatchSplit", "Average", "Block", "BASE", "route",
           "average", "normalize", "check", "expand_mixer", "prepare", "without", "row_mask", "install", "uninstall",
           "all_names", "member_names"]


def expand_mixer(block, controller):
    """Activating a mixing adapter by its name (as `load` does) activates its block."""
    names = (block,) if isinstance(block, str) else block if isinstance(block, tuple) else ()
    attachment = controller.adapters.get(names[0]) if len(names) == 1 else None
    if attachment is None or attachment.config.method not in mixers.MIXING_METHODS:
        return block
    config = attachment.config
    if config.method == "fusion":
        return Fuse(*config.adapters, name=attachment.name, temperature=config.temperature)
    options = {k: v for k, v in config.to_dict().items() if k in WeightedSum.OPTIONS}
    return WeightedSum(*config.adapters, name=attachment.name, **options)


def check(block, controller) -> None:
    """Nesting rules, and no mixing adapter used as a plain name beside others."""
    check_nesting(block)
    for name in member_names(block):
        attachment = controller.adapters.get(name)
        if attachment is not None and attachment.config.method in mixers.MIXING_METHODS:
            raise PeftlabError(f"'{name}' holds mixing weights ({attachment.config.method}); activate it alone "
                               f"or through its block, e.g. pl.Fuse(..., name='{name}')")


def prepare(model, block):
    """Attach the mixing adapters `block` needs and create Average adapters; returns the block to run.
    If anything fails, what this call attached is detached again."""
    from ..core import _require, attach, detach
    controller = _require(model)
    created = []
    try:
        for inner in walk(block):
            if isinstance(inner, _Mixing):
                _ensure_mixer(model, controller, inner, attach, created)
        if isinstance(block, Average):
            created.append(average(model, block.members, block.weights, block.name))
            block = block.name
    except BaseException:
        for name in reversed(created):
            detach(model, name)
        raise
    return block


def _ensure_mixer(model, controller, block, attach, created) -> None:
    config = block.mixer_config()
    existing = controller.adapters.get(block.name)
    if existing is None:
        attach(model, config, block.name, activate=False)
        created.append(block.name)
        return
    ignored = ("sources",)   # where members were loaded from does not change the mixing
    if {k: v for k, v in existing.config.to_dict().items() if k not in ignored} != \
            {k: v for k, v in config.to_dict().items() if k not in ignored}:
        raise PeftlabError(f"an adapter named '{block.name}' exists with other settings "
                           f"({existing.config.method} over {list(getattr(existing.config, 'adapters', []))}); "
                           f"detach it or give the block another name=")


def row_mask(model, name: str, n_rows: int):
    """For methods that act outside Slots (prompts): a bool tensor of the rows that adapter `name` serves
    in the current call (per-row routing, or a top-level BatchSplit / ParallelBlock), or None when every
    row runs the same setup (then the active set decides)."""
    import torch
    from ..state import controller_of
    from .evaluate import row_groups
    current = routing.current()
    controller = controller_of(model)
    block = current if current is not None and current.names else (controller.active if controller else ())
    if not isinstance(block, (routing.Route, BatchSplit, ParallelBlock)):
        return None
    groups, _ = row_groups(block, n_rows)
    mask = torch.zeros(n_rows, dtype=torch.bool)
    for member, rows in groups:
        if name in all_names(member):
            mask[rows] = True
    return mask
