"""Composition blocks: what `pl.activate(model, block)` accepts, and the nesting rules between them.

A block is a small immutable description; it holds adapter names (or nested blocks), never tensors.
Blocks whose mixing has parameters (Fuse, WeightedSum) name the adapter that holds them (`name`,
default derived from the members); that adapter is created by an explicit `pl.attach(model, block)`
(as AdapterHub's `add_adapter_fusion`), and `Average` likewise creates its adapter when attached.
"""
from __future__ import annotations

from typing import Iterator

from .config import closest
from .errors import PeftlabError
from .registry import config_from_dict

BASE = "__base__"   # in `adapter_names=[...]`: this row runs the bare base model


class Block:
    """Base of the composition blocks. `members` are adapter names or nested blocks."""

    kind = "block"
    allowed_inside: tuple[type, ...] = ()   # block types a member may be (names are always allowed)

    def __init__(self, *members):
        if len(members) == 1 and isinstance(members[0], (list, tuple)):
            members = tuple(members[0])
        if not members:
            raise PeftlabError(f"{type(self).__name__}() needs at least one adapter name")
        for m in members:
            if not isinstance(m, (str, Block)):
                raise PeftlabError(f"{type(self).__name__}: member {m!r} is neither an adapter name nor a block")
        self.members = tuple(members)

    def options(self) -> dict:
        return {}

    def adapter_names(self) -> tuple[str, ...]:
        """Every adapter this block runs (members, nested members, and its mixing adapter if any)."""
        out = []
        for m in self.members:
            out.extend([m] if isinstance(m, str) else m.adapter_names())
        return tuple(out)

    def __repr__(self):
        inner = [repr(m) for m in self.members] + [f"{k}={v!r}" for k, v in self.options().items()]
        return f"{type(self).__name__}({', '.join(inner)})"

    def __eq__(self, other):
        return type(self) is type(other) and self.members == other.members and self.options() == other.options()

    def __hash__(self):
        return hash((type(self).__name__, self.members))


class Stack(Block):
    """Apply the members in order at every layer: `Stack("lang", "task")` (MAD-X).

    At one module, parts that change the module's input run first (in order), then the module, then
    additive parts (LoRA, biases: they modify the module itself, so they commute), then output parts in
    order. A Stack of names therefore equals `activate(model, "a", "b")`."""

    kind = "stack"


class BatchSplit(Block):
    """Route consecutive rows of the batch to the members: `BatchSplit("a", "b", sizes=[2, 3])`."""

    kind = "batch_split"

    def __init__(self, *members, sizes):
        super().__init__(*members)
        sizes = tuple(sizes)
        if len(sizes) != len(self.members) or not all(isinstance(s, int) and s >= 0 for s in sizes):
            raise PeftlabError(f"BatchSplit sizes {list(sizes)} must be {len(self.members)} non-negative ints, "
                               f"one per member")
        self.sizes = sizes

    def options(self):
        return {"sizes": list(self.sizes)}


class ParallelBlock(Block):
    """Run every member on its own copy of the batch: rows [i*B, (i+1)*B) of the outputs come from
    member i. (Exported as `ParallelBlock`: `pl.Parallel` is He et al.'s parallel adapter config.)"""

    kind = "parallel"


class Mixing(Block):
    """A block whose members' outputs are mixed at each layer by parameters of a mixing adapter."""

    prefix = "mix"

    def __init__(self, *members, name: str | None = None):
        super().__init__(*members)
        check_nesting(self)   # only adapter names can be mixed: say so now, not at activation
        dupes = sorted({m for m in self.members if self.members.count(m) > 1})
        if dupes:
            raise PeftlabError(f"{type(self).__name__}: adapter '{dupes[0]}' appears twice")
        self.name = name or "_".join((self.prefix, *self.members))

    def adapter_names(self):
        return (*self.members, self.name)

    def mixer_config(self) -> dict:
        """The config (as a mapping, `{"method": ..., ...}`) of the adapter holding the mixing weights."""
        raise NotImplementedError


class Fuse(Mixing):
    """AdapterFusion (Pfeiffer et al.): per layer, attention from the layer's hidden state (query) over
    the members' outputs (keys and values). Only the fusion parameters train; the members are frozen."""

    kind = "fuse"
    prefix = "fuse"

    def __init__(self, *members, name: str | None = None, temperature: float = 1.0):
        super().__init__(*members, name=name)
        self.temperature = float(temperature)

    def options(self):
        return {"name": self.name, "temperature": self.temperature}

    def mixer_config(self) -> dict:
        return {"method": "fusion", "adapters": list(self.members), "temperature": self.temperature}


class WeightedSum(Mixing):
    """The multi-adapter of jiant / nlprunners: per layer, a weighted mix of the members' outputs and
    (with `include_base`) the base model's own output. Options are the `weighted_sum` config's fields (see
    docs/composition.md); they are validated when the block is made."""

    kind = "weighted_sum"
    prefix = "wsum"
    OPTIONS = ("mode", "num_weight_sets", "include_base", "flex", "flex_size", "flex_reduction_factor",
               "train_mode", "head_from", "compat")

    def __init__(self, *members, name: str | None = None, **options):
        super().__init__(*members, name=name)
        unknown = [k for k in options if k not in self.OPTIONS]
        if unknown:
            raise PeftlabError(f"WeightedSum: unknown option '{unknown[0]}'{closest(unknown[0], self.OPTIONS)}")
        self._options = options
        config = config_from_dict(self.mixer_config())   # validates the options now, not at attach or activation
        self._options = {k: getattr(config, k) for k in self.OPTIONS}

    def options(self):
        return {"name": self.name, **self._options}

    def mixer_config(self) -> dict:
        return {"method": "weighted_sum", "adapters": list(self.members), **self._options}


class Average(Block):
    """A new adapter `name` whose weights are the weighted average of the members' (same method, same
    shapes); LoRA members are averaged exactly in ΔW (see `peftlab.average`). `pl.attach(model, block)`
    creates it; then it is an ordinary adapter, activated by its name."""

    kind = "average"

    def __init__(self, *members, weights=None, name: str | None = None):
        super().__init__(*members)
        if not all(isinstance(m, str) for m in self.members):
            raise PeftlabError("Average takes adapter names only")
        n = len(self.members)
        weights = tuple(float(w) for w in (weights if weights is not None else [1.0 / n] * n))
        if len(weights) != n:
            raise PeftlabError(f"Average weights {list(weights)} must have {n} entries, one per adapter")
        self.weights = weights
        self.name = name or "_".join(("avg", *self.members))

    def options(self):
        return {"weights": list(self.weights), "name": self.name}


# --- nesting rules -----------------------------------------------------------------------------------

Stack.allowed_inside = (Fuse, WeightedSum, BatchSplit)
BatchSplit.allowed_inside = (Stack, Fuse, WeightedSum)
ParallelBlock.allowed_inside = (Stack, Fuse, WeightedSum)
Fuse.allowed_inside = ()
WeightedSum.allowed_inside = ()
Average.allowed_inside = ()
TOP_LEVEL_ONLY = (ParallelBlock, Average)


def normalize(block):
    """A name, a tuple/list of names (= Stack semantics, kept as a tuple), or a Block."""
    if isinstance(block, str) or isinstance(block, Block):
        return block
    if isinstance(block, (tuple, list)):
        items = tuple(block)
        for item in items:
            if not isinstance(item, str):
                raise PeftlabError(f"cannot activate {item!r} inside a list of names; use pl.Stack(...) to nest blocks")
        return items
    raise PeftlabError(f"cannot activate {block!r}: give adapter names or a composition block")


def check_nesting(block, top: bool = True) -> None:
    """Raise on a disallowed nesting, naming the outer and inner block."""
    if not isinstance(block, Block):
        return
    if not top and isinstance(block, TOP_LEVEL_ONLY):
        raise PeftlabError(f"{type(block).__name__} may only be the outermost block, found inside another block")
    for member in block.members:
        if isinstance(member, Block):
            if not isinstance(member, block.allowed_inside):
                allowed = ", ".join(t.__name__ for t in block.allowed_inside) or "only adapter names"
                raise PeftlabError(f"{type(member).__name__} cannot be nested in {type(block).__name__} "
                                   f"(allowed inside {type(block).__name__}: {allowed})")
            check_nesting(member, top=False)


def walk(block) -> Iterator:
    """The block and every nested block, outermost first."""
    yield block
    if isinstance(block, Block):
        for member in block.members:
            yield from walk(member)


def member_names(block) -> tuple[str, ...]:
    """Adapter names a block needs attached before activation (its mixing adapters excluded)."""
    if isinstance(block, str):
        return (block,)
    if isinstance(block, tuple):
        return block
    out = []
    for m in block.members:
        out.extend(member_names(m))
    return tuple(out)


def all_names(block) -> tuple[str, ...]:
    if isinstance(block, str):
        return (block,)
    if isinstance(block, tuple):
        return tuple(n for item in block for n in all_names(item))
    return tuple(block.adapter_names())


def without(block, name: str):
    """The active setup after detaching `name`: a block that used it is switched off entirely."""
    if isinstance(block, tuple):
        return tuple(n for n in block if n != name)
    if isinstance(block, str):
        return () if block == name else block
    return () if name in all_names(block) else block
