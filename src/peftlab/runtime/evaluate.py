"""How the parts of the active adapters combine at one Host, for any active setup.

A setup acts at a module in two steps around one call of the base module:
  pre(block, x)        the module's input: taps see it, input parts change it (IA3 on the FFN input);
  post(block, x, h)    the module's output h: additive parts (LoRA, biases) add f(x), output parts
                       (bottleneck adapters, scales) map h -> h'.
A tuple of names runs its adapters' parts together, role by role. Mixing blocks (Fuse, WeightedSum)
compute each member's post on the same h and mix the results; row blocks (BatchSplit, ParallelBlock,
per-example routing) give each member its rows. The base module is called once per forward, on the
whole batch, whatever the block: a mixed batch costs one base call. A Split gives each member its
positions of the sequence; an AverageOutputs mixes the members' outputs with fixed weights.
"""
from __future__ import annotations

import torch

from ..blocks import AverageOutputs, Block, Mixing, Split, Stack
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
    if isinstance(block, (Mixing, AverageOutputs)):
        for member in block.members:
            if pre(member, host, x) is not x:
                raise PeftlabError(f"{type(block).__name__} member '{member}' changes the input of {host.path}; "
                                   f"only adapters acting on a module's output can be mixed")
        return _names_pre(host, (block.name,), x) if isinstance(block, Mixing) else x   # the mixer's own taps
    if isinstance(block, Split):
        if not any(_touches_input(host, member) for member in block.members):
            return x
        pieces = [pre(member, host, x[:, cut]) for member, cut in zip(block.members, _cuts(block, host, x))]
        return torch.cat(pieces, 1)
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
        names_post = _chained_post if block.compat == "adapterhub" else _names_post
        for run_ in _runs(block.members):
            h = names_post(host, run_, x_in, h) if isinstance(run_, tuple) else post(run_, host, x_in, h)
        return h
    if isinstance(block, Mixing):   # the members mixed, then the mixing adapter's own output parts
        return _names_post(host, (block.name,), x_in, _mix(block, host, x_in, h))
    if isinstance(block, AverageOutputs):
        return _average(block, host, x_in, h)
    if isinstance(block, Split):
        if not any(_parts(host, member) for member in block.members):
            return h
        cuts = _cuts(block, host, h)
        if x_in is None or x_in.dim() < 2 or x_in.shape[1] != h.shape[1]:
            raise PeftlabError(f"Split at {host.path}: its input and output differ in length; positions cannot be "
                               f"given to different adapters there")
        return torch.cat([post(member, host, x_in[:, cut], h[:, cut]) for member, cut in zip(block.members, cuts)], 1)
    groups, inverse = routing.row_groups(block, h.shape[0])
    pieces = [post(member, host, routing.take(x_in, rows), routing.take(h, rows)) for member, rows in groups]
    return routing.assemble(pieces, inverse)


def _mix(block, host, x_in, h):
    mixer = next((p for p in host.parts[block.name] if p.role == "mix"), None) if block.name in host.parts else None
    if hasattr(mixer, "mix_parts"):   # a mixer that reads inside its members (AdapterHub's fusion)
        present = [(m, parts[0]) for m in block.members
                   for parts in [[p for p in live(host, m) if p.role == "output"]] if parts]
        return mixer.mix_parts(h, present) if present else h
    outputs = [post(member, host, x_in, h) for member in block.members]
    if all(y is h for y in outputs):
        return h   # no member acts here: nothing to mix
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


def _chained_post(host, names, x_in, h):
    """AdapterHub's stack at one module: each additive part reads the previous one's update instead of the
    module's input, and only the last update is added; output parts then run in order."""
    parts = [p for n in names for p in live(host, n)]
    update = None
    for part in (p for p in parts if p.role == "add"):
        if update is not None and update.shape[-1] != _in_features(part, update.shape[-1]):
            raise PeftlabError(f"Stack(compat='adapterhub') at {host.path}: AdapterHub feeds one LoRA's update "
                               f"({update.shape[-1]} features) into the next, which reads {_in_features(part, 0)}")
        update = part(x_in if update is None else update)
    return run_post([p for p in parts if p.role == "output"], x_in, h if update is None else h + update)


def _in_features(part, default: int) -> int:
    """The width an additive part reads (its A matrix's), or `default` when it has none to tell."""
    a = getattr(part, "lora_A", None)
    a = getattr(a, "weight", a)
    return a.shape[-1] if a is not None else default


def _cuts(block: Split, host, t) -> list[slice]:
    """The members' runs of positions along dim 1 (AdapterHub's Split checks the length the same way,
    bottleneck.py:309-314)."""
    if t.dim() < 2 or t.shape[1] != sum(block.splits):
        length = t.shape[1] if t.dim() >= 2 else "no"
        raise PeftlabError(f"Split sizes {list(block.splits)} sum to {sum(block.splits)}, but {host.path} sees a "
                           f"sequence of {length} positions")
    cuts, start = [], 0
    for size in block.splits:
        cuts.append(slice(start, start + size))
        start += size
    return cuts


def _average(block: AverageOutputs, host, x_in, h):
    """h + Σ w_i (y_i - h); with compat="adapterhub" AdapterHub's torch.mean over the weighted states
    (adapter_layer_base.py:558-581, bottleneck.py:226-237, lora.py:924-937): (1/n) Σ w_i y_i where the adapters
    map the output (bottleneck adapters, (IA)³), h + (1/n) Σ w_i (y_i - h) where they add to it (LoRA)."""
    outputs = [post(member, host, x_in, h) for member in block.members]
    if all(y is h for y in outputs):
        return h
    pairs = list(zip(block.weights, outputs))
    if block.compat != "adapterhub":
        return h + sum(w * (y - h) for w, y in pairs)
    roles = {p.role for member in block.members for p in _parts(host, member) if p.role in ("add", "output")}
    if roles == {"add", "output"}:
        raise PeftlabError(f"AverageOutputs(compat='adapterhub') at {host.path}: some members add to the output and "
                           f"some map it; AdapterHub averages one kind of adapter per layer")
    n = len(block.members)
    if roles == {"add"}:
        return h + sum(w * (y - h) for w, y in pairs) / n
    return sum(w * y for w, y in pairs) / n


def _parts(host, member) -> list:
    """The live parts a member (a name or a block of names) has at this host."""
    if isinstance(member, str):
        return live(host, member)
    names = member if isinstance(member, tuple) else member.members
    return [p for m in names for p in _parts(host, m)]


def _touches_input(host, member) -> bool:
    if isinstance(member, str):
        return any(p.role in ("tap", "input") for p in live(host, member))
    if isinstance(member, tuple):
        return any(_touches_input(host, m) for m in member)
    return isinstance(member, Block) and any(_touches_input(host, m) for m in member.members)
