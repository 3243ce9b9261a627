"""How the parts of the active adapters combine at one Host, for any active setup.

A setup acts at a module in two steps around one call of the base module:
  pre(block, x)        the module's input: taps see it, input parts change it (IA3 on the FFN input);
  post(block, x, h)    the module's output h: additive parts (LoRA, biases) add f(x), output parts
                       (bottleneck adapters, scales) map h -> h'.
A tuple of names runs its adapters' parts together, role by role. Mixing blocks (Fuse, WeightedSum)
compute each member's post on the same h and mix the results; row blocks (BatchSplit, ParallelBlock,
per-example routing) give each member its rows. The base module is called once per forward, on the
whole batch, whatever the block: a mixed batch costs one base call.
"""
from __future__ import annotations

from ..blocks import Block, Mixing, Stack
from ..errors import PeftlabError
from . import routing
from .parts import first_input, live, replace_first_input, run_post, run_pre


def run(host, args, kwargs):
    """One call of `host`: its base module with the active setup's parts around it."""
    route = routing.current()
    block = route if route is not None and route.names else host.activation.block
    if type(block) is tuple:   # the common case, names only: gather the parts once
        return _run_parts(host, [p for n in block for p in live(host, n)], args, kwargs)
    x = first_input(args, kwargs)
    x_in = pre(block, host, x)
    if x_in is not x:
        args, kwargs = replace_first_input(args, kwargs, x_in)
    out = host.base_layer(*args, **kwargs)
    h = out[0] if isinstance(out, tuple) else out
    h = post(block, host, x_in, h)
    return (h, *out[1:]) if isinstance(out, tuple) else h


def _run_parts(host, parts, args, kwargs):
    if not parts:
        return host.base_layer(*args, **kwargs)
    x = first_input(args, kwargs)
    x_in = run_pre(parts, x)
    if x_in is not x:
        args, kwargs = replace_first_input(args, kwargs, x_in)
    out = host.base_layer(*args, **kwargs)
    h = run_post(parts, x_in, out[0] if isinstance(out, tuple) else out)
    return (h, *out[1:]) if isinstance(out, tuple) else h


def _names_pre(host, names, x):
    return run_pre([p for n in names for p in live(host, n)], x)


def _names_post(host, names, x_in, h):
    return run_post([p for n in names for p in live(host, n)], x_in, h)


def pre(block, host, x):
    if isinstance(block, str):
        return _names_pre(host, (block,), x)
    if isinstance(block, tuple):
        return _names_pre(host, block, x)
    if isinstance(block, Stack):
        for run_ in _runs(block.members):
            x = _names_pre(host, run_, x) if isinstance(run_, tuple) else pre(run_, host, x)
        return x
    if isinstance(block, Mixing):
        for member in block.members:
            if pre(member, host, x) is not x:
                raise PeftlabError(f"{type(block).__name__} member '{member}' changes the input of {host.path}; "
                                   f"only adapters acting on a module's output can be mixed")
        return _names_pre(host, (block.name,), x)   # the mixing adapter's own taps
    groups, inverse = routing.row_groups(block, x.shape[0])
    if not any(_touches_input(host, member) for member, _ in groups):
        return x
    pieces = [pre(member, host, routing.take(x, rows)) for member, rows in groups]
    return routing.assemble(pieces, inverse)


def post(block, host, x_in, h):
    if isinstance(block, str):
        return _names_post(host, (block,), x_in, h)
    if isinstance(block, tuple):
        return _names_post(host, block, x_in, h)
    if isinstance(block, Stack):
        for run_ in _runs(block.members):
            h = _names_post(host, run_, x_in, h) if isinstance(run_, tuple) else post(run_, host, x_in, h)
        return h
    if isinstance(block, Mixing):   # the members mixed, then the mixing adapter's own output parts
        return _names_post(host, (block.name,), x_in, _mix(block, host, x_in, h))
    groups, inverse = routing.row_groups(block, h.shape[0])
    pieces = [post(member, host, routing.take(x_in, rows), routing.take(h, rows)) for member, rows in groups]
    return routing.assemble(pieces, inverse)


def _mix(block, host, x_in, h):
    outputs = [post(member, host, x_in, h) for member in block.members]
    if all(y is h for y in outputs):
        return h   # no member acts here: nothing to mix
    mixer = next((p for p in host.parts[block.name] if p.role == "mix"), None) if block.name in host.parts else None
    if mixer is None:
        raise PeftlabError(f"'{block.name}' has no mixing layer at {host.path}; detach it and attach the block again")
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


def _touches_input(host, member) -> bool:
    if isinstance(member, str):
        return any(p.role in ("tap", "input") for p in live(host, member))
    if isinstance(member, tuple):
        return any(_touches_input(host, m) for m in member)
    return isinstance(member, Block) and any(_touches_input(host, m) for m in member.members)
