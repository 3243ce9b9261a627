"""Per-call row routing: `model(..., adapter_names=[...])`, `generate(..., adapter_names=[...])`,
BatchSplit size checks and ParallelBlock's batch replication.

A model-level forward pre-hook pops `adapter_names`, checks it, and makes the routing visible to the
Slots through a context variable for that call only; a forward hook (always called) resets it. No
module state changes, so forward stays pure and concurrent calls in other threads are unaffected.
`generate` validates its keyword arguments against the model's signature, so the model's `generate`
is wrapped (on the instance, journaled, removed with the last adapter) to route for the whole call.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import torch

from ..config import closest
from ..errors import PeftlabError
from ..surgery import Journal, add_hook, set_attr
from .blocks import BASE, BatchSplit, ParallelBlock, walk

_ROUTE: contextvars.ContextVar["Route | None"] = contextvars.ContextVar("peftlab_route", default=None)
_JOURNAL = "_peftlab_compose_journal"
BATCH_KEYS = ("input_ids", "inputs_embeds", "decoder_input_ids", "decoder_inputs_embeds")


class Route:
    """Which rows of this call go to which adapter (a name or `()` for the bare base model)."""

    def __init__(self, names, replicate: int = 1):
        self.names = tuple(names)
        self.replicate = replicate   # ParallelBlock: the inputs were copied this many times
        self._groups: dict[int, list] = {}

    def groups(self, n_rows: int):
        """[(member, rows)] for a tensor of `n_rows` rows; rows are a slice or an index tensor, plus the
        permutation that puts the concatenated group outputs back in row order (None when in order)."""
        if n_rows not in self._groups:
            self._groups[n_rows] = _group_rows(self._names_for(n_rows))
        return self._groups[n_rows]

    def _names_for(self, n_rows):
        per = len(self.names)
        if n_rows == per:
            return self.names
        if per and n_rows % per == 0:   # generate() with beams or num_return_sequences repeats each row
            k = n_rows // per
            return tuple(n for n in self.names for _ in range(k))
        raise PeftlabError(f"adapter_names has {per} entries but a layer saw a batch of {n_rows} rows")


def _group_rows(names):
    """Rows grouped by name in first-seen order: slices when each group is one run in order, else
    index tensors plus the inverse permutation."""
    order, firsts = [], {}
    for i, n in enumerate(names):
        firsts.setdefault(n, []).append(i)
    contiguous, start = True, 0
    for rows in firsts.values():
        if rows != list(range(rows[0], rows[0] + len(rows))) or rows[0] != start:
            contiguous = False
        start += len(rows)
        order.extend(rows)
    member = lambda n: () if n == BASE else n   # noqa: E731
    if contiguous:
        bounds = [0]
        for rows in firsts.values():
            bounds.append(bounds[-1] + len(rows))
        return [(member(n), slice(a, b)) for n, a, b in zip(firsts, bounds, bounds[1:])], None
    index = [(member(n), torch.tensor(rows)) for n, rows in firsts.items()]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return index, inverse


def current() -> Route | None:
    return _ROUTE.get()


@contextlib.contextmanager
def routed(route: Route | None):
    token = _ROUTE.set(route)
    try:
        yield
    finally:
        _ROUTE.reset(token)


def route(model, adapter_names):
    """`with pl.route(model, ["a", "b", "__base__"]): ...` routes rows for every call inside."""
    return routed(make_route(model, adapter_names))


def make_route(model, adapter_names) -> Route:
    from ..state import controller_of
    controller = controller_of(model)
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)) or not adapter_names:
        raise PeftlabError(f"adapter_names must be a non-empty list of adapter names, one per row; "
                           f"got {adapter_names!r}")
    known = controller.adapters if controller is not None else {}
    merged = next((n for n, a in known.items() if any(getattr(p, "merged", False) for _, p in a.parts)), None)
    if merged is not None:
        raise PeftlabError(f"cannot route rows while adapter '{merged}' is merged into the base weights "
                           f"(it would act on every row); unmerge it first")
    for n in adapter_names:
        if n != BASE and n not in known:
            raise PeftlabError(f"adapter_names: no adapter named {n!r}{closest(str(n), known)}; "
                               f"attached: {', '.join(known) or 'none'} (or '{BASE}' for the base model)")
    return Route(adapter_names)


def _batch_size(args, kwargs) -> int | None:
    for key in BATCH_KEYS:
        value = kwargs.get(key)
        if torch.is_tensor(value):
            return value.shape[0]
    if args and torch.is_tensor(args[0]):
        return args[0].shape[0]
    return None


def check_batch_splits(block, rows: int | None) -> None:
    for inner in walk(block):
        if isinstance(inner, BatchSplit) and rows is not None and sum(inner.sizes) != rows:
            raise PeftlabError(f"BatchSplit sizes {list(inner.sizes)} sum to {sum(inner.sizes)}, "
                               f"but the batch has {rows} rows")


def _replicate(args, kwargs, rows: int, copies: int):
    def rep(v):
        return v.repeat(copies, *([1] * (v.dim() - 1))) if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
    return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}


class _Hooks:
    """The pre/post hook pair on the model. A stack of tokens, so nested model calls reset correctly."""

    def __init__(self):
        self.tokens: list = []

    def pre(self, module, args, kwargs):
        names = kwargs.pop("adapter_names", None)
        controller = module.__dict__.get("_peftlab")
        block = controller.active if controller is not None else ()
        rows = _batch_size(args, kwargs)
        new_route = None
        if names is not None:
            new_route = make_route(module, names)
            if rows is not None and rows % max(len(names), 1):
                raise PeftlabError(f"adapter_names has {len(names)} entries for a batch of {rows} rows")
        elif current() is None and isinstance(block, ParallelBlock) and rows is not None:
            copies = len(block.members)
            args, kwargs = _replicate(args, kwargs, rows, copies)
            new_route = Route([], replicate=copies)
        if new_route is None and current() is None:
            check_batch_splits(block, rows)
        self.tokens.append(_ROUTE.set(new_route) if new_route is not None else None)
        return args, kwargs

    def post(self, module, args, output):
        token = self.tokens.pop() if self.tokens else None
        if token is not None:
            _ROUTE.reset(token)
        return output


def _generate(original, model, *args, adapter_names=None, **kwargs):
    if adapter_names is not None:
        with routed(make_route(model, adapter_names)):
            return original(*args, **kwargs)
    controller = model.__dict__.get("_peftlab")
    block = controller.active if controller is not None else ()
    rows = _batch_size(args, kwargs)
    if not isinstance(block, ParallelBlock) or rows is None:
        return original(*args, **kwargs)
    # ParallelBlock: generate for k copies of the batch at once, copy i routed to member i.
    args, kwargs = _replicate(args, kwargs, rows, len(block.members))
    with routed(Route([m for m in block.members for _ in range(rows)])):
        return original(*args, **kwargs)


def install(model) -> None:
    """Register the routing hooks once per model (undone by `uninstall`)."""
    if _JOURNAL in model.__dict__:
        return
    journal = Journal()
    hooks = _Hooks()
    add_hook(model.register_forward_pre_hook, hooks.pre, journal, with_kwargs=True)
    add_hook(model.register_forward_hook, hooks.post, journal, always_call=True)
    if callable(getattr(model, "generate", None)):
        original = model.generate
        set_attr(model, "generate", functools.wraps(original)(functools.partial(_generate, original, model)), journal)
    model.__dict__[_JOURNAL] = journal


def uninstall(model) -> None:
    journal = model.__dict__.pop(_JOURNAL, None)
    if journal is not None:
        journal.rollback()
