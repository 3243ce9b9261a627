"""Which rows of a call go to which adapter: per-call routes (`adapter_names=[...]`, ParallelBlock's
copies of the batch) and the row blocks (BatchSplit, ParallelBlock).

A route is made visible to the Hosts through a context variable for one call only (the model's call
hooks in `peftlab.calls` set and reset it), so forward stays pure and threads do not see each other's.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

from ..blocks import BASE, BatchSplit, ParallelBlock
from ..errors import PeftlabError

_ROUTE: contextvars.ContextVar["Route | None"] = contextvars.ContextVar("peftlab_route", default=None)


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


def set_route(route: Route | None):
    """Make `route` current until `reset_route(token)` (for a pair of forward hooks)."""
    return _ROUTE.set(route)


def reset_route(token) -> None:
    _ROUTE.reset(token)


def row_groups(block, n_rows: int):
    """[(member, rows)] and the permutation restoring row order (None when the groups are in order)."""
    if isinstance(block, Route):
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
