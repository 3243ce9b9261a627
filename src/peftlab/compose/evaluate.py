"""How the parts of several adapters combine at one Slot under a composition block.

A block acts at a module in two steps around one call of the base module:
  pre(block, x)        the module's input: taps see it, input parts change it (IA3 on the FFN input);
  post(block, x, h)    the module's output h: additive parts (LoRA, biases) add f(x), output parts
                       (bottleneck adapters, scales) map h -> h'.
Mixing blocks (Fuse, WeightedSum) compute each member's post on the same h and mix the results; row
blocks (BatchSplit, ParallelBlock, per-example routing) give each member its rows. The base module is
called once per forward, on the whole batch, whatever the block: a mixed batch costs one base call.
"""
from __future__ import annotations

import torch

from ..errors import PeftlabError
from ..surgery import _first_input, _replace_first_input, run_post, run_pre
from . import routing
from .blocks import BatchSplit, Block, ParallelBlock, Stack, _Mixing


def run_composed(slot, args, kwargs):
    route = routing.current()
    block = route if route is not None and route.names else slot.block
    x = _first_input(args, kwargs)
    x_in = pre(block, slot, x)
    if x_in is not x:
        args, kwargs = _replace_first_input(args, kwargs, x_in)
    out = slot.base_layer(*args, **kwargs)
    h = out[0] if isinstance(out, tuple) else out
    h = post(block, slot, x_in, h)
    return (h, *out[1:]) if isinstance(out, tuple) else h


def live(slot, name) -> list:
    """The parts of adapter `name` that act at this slot in this forward."""
    if not isinstance(name, str) or name not in slot.parts:
        return []
    return [p for p in slot.parts[name] if not getattr(p, "merged", False) and not p.skipped(slot)]


def _names_pre(slot, names, x):
    return run_pre([p for n in names for p in live(slot, n)], x)


def _names_post(slot, names, x_in, h):
    return run_post([p for n in names for p in live(slot, n)], x_in, h)


def pre(block, slot, x):
    if isinstance(block, str):
        return _names_pre(slot, (block,), x)
    if isinstance(block, tuple):
        return _names_pre(slot, block, x)
    if isinstance(block, Stack):
        for run in _runs(block.members):
            x = _names_pre(slot, run, x) if isinstance(run, tuple) else pre(run, slot, x)
        return x
    if isinstance(block, _Mixing):
        for member in block.members:
            if pre(member, slot, x) is not x:
                raise PeftlabError(f"{type(block).__name__} member '{member}' changes the input of {slot.path}; "
                                   f"only adapters acting on a module's output can be mixed")
        return x
    groups, inverse = row_groups(block, x.shape[0])
    if not any(_touches_input(slot, member) for member, _ in groups):
        return x
    pieces = [pre(member, slot, take(x, rows)) for member, rows in groups]
    return assemble(pieces, inverse)


def post(block, slot, x_in, h):
    if isinstance(block, str):
        return _names_post(slot, (block,), x_in, h)
    if isinstance(block, tuple):
        return _names_post(slot, block, x_in, h)
    if isinstance(block, Stack):
        for run in _runs(block.members):
            h = _names_post(slot, run, x_in, h) if isinstance(run, tuple) else post(run, slot, x_in, h)
        return h
    if isinstance(block, _Mixing):
        return _mix(block, slot, x_in, h)
    groups, inverse = row_groups(block, h.shape[0])
    pieces = [post(member, slot, take(x_in, rows), take(h, rows)) for member, rows in groups]
    return assemble(pieces, inverse)


def _mix(block, slot, x_in, h):
    outputs = [post(member, slot, x_in, h) for member in block.members]
    if all(y is h for y in outputs):
        return h   # no member acts here: nothing to mix
    mixer = next((p for p in slot.parts[block.name] if p.role == "mix"), None) if block.name in slot.parts else None
    if mixer is None:
        raise PeftlabError(f"'{block.name}' has no mixing layer at {slot.path}; detach it and activate the block again")
    return mixer(h, outputs)


def _runs(members):
    """Consecutive adapter names grouped into tuples (they combine role by role), blocks alone."""
    runs, names = [], []
    for m in members:
        if isinstance(m, str):
            names.append(m)
            continue
        if names:
            runs.append(tuple(names))
            names = []
        runs.append(m)
    if names:
        runs.append(tuple(names))
    return runs


def _touches_input(slot, member) -> bool:
    if isinstance(member, str):
        return any(p.role in ("tap", "input") for p in live(slot, member))
    if isinstance(member, tuple):
        return any(_touches_input(slot, m) for m in member)
    return isinstance(member, Block) and any(_touches_input(slot, m) for m in member.members)


# --- rows ------------------------------------------------------------------------------------------

def row_groups(block, n_rows: int):
    """[(member, rows)] and the permutation restoring row order (None when the groups are in order)."""
    if isinstance(block, routing.Route):
        return block.groups(n_rows)
    if isinstance(block, BatchSplit):
        if sum(block.sizes) != n_rows:
            raise PeftlabError(f"BatchSplit sizes {list(block.sizes)} sum to {sum(block.sizes)}, "
                               f"but the batch has {n_rows} rows")
        return _slices(block.members, block.sizes), None
    if isinstance(block, ParallelBlock):
        copies = len(block.members)
        if n_rows % copies:
            raise PeftlabError(f"ParallelBlock of {copies} members got {n_rows} rows, not a multiple of {copies}")
        return _slices(block.members, [n_rows // copies] * copies), None
    raise PeftlabError(f"cannot run {block!r} at a layer")


def _slices(members, sizes):
    out, start = [], 0
    for member, size in zip(members, sizes):
        out.append((member, slice(start, start + size)))
        start += size
    return out


def take(t, rows):
    if isinstance(rows, slice):
        return t[rows]
    return t.index_select(0, rows.to(t.device))


def assemble(pieces, inverse):
    joined = torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]
    return joined if inverse is None else joined.index_select(0, inverse.to(joined.device))
