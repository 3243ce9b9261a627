"""Composition blocks: what `pl.activate(model, block)` accepts, and the nesting rules between them.

A block is a small immutable description; it holds adapter names (or nested blocks), never tensors.
Blocks whose mixing has parameters (Fuse, WeightedSum) name the adapter that holds them (`name`,
default derived from the members); that adapter is created by an explicit `pl.attach(model, block)`
(as AdapterHub's `add_adapter_fusion`), and `Average` likewise creates its adapter when attached.
"""
from __future__ import annotations

import math
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
    order. A Stack of names therefore equals `activate(model, "a", "b")`.

    `compat="adapterhub"`: AdapterHub's stack, which feeds each LoRA's update into the next LoRA at the same
    module and adds only the last one's result: h + s_b B_b A_b (s_a B_a A_a x) (methods/lora.py:162-174,
    adapter_layer_base.py:384-399); everything else composes as above."""

    kind = "stack"

    def __init__(self, *members, compat: str | None = None):
        super().__init__(*members)
        if compat not in (None, "adapterhub"):
            raise PeftlabError(f"Stack.compat: {compat!r} is not None or 'adapterhub'")
        self.compat = compat

    def options(self):
        return {"compat": self.compat} if self.compat else {}


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
    # the fusion config's other fields (compat="adapterhub": AdapterHub's AdapterFusionConfig, see
    # methods/fusion.py); validated when the block is made, kept where they differ from the defaults
    OPTIONS = ("compat", "query", "key", "value", "query_before_ln", "residual_before", "value_before_softmax",
               "value_initialized", "regularization", "dropout")

    def __init__(self, *members, name: str | None = None, temperature: float = 1.0, **options):
        super().__init__(*members, name=name)
        unknown = [k for k in options if k not in self.OPTIONS]
        if unknown:
            raise PeftlabError(f"Fuse: unknown option '{unknown[0]}'{closest(unknown[0], self.OPTIONS)}")
        self.temperature, self._options = float(temperature), dict(options)
        config = config_from_dict(self.mixer_config())
        plain = config_from_dict({"method": "fusion", "adapters": list(self.members)})
        self._options = {k: getattr(config, k) for k in self.OPTIONS if getattr(config, k) != getattr(plain, k)}

    def options(self):
        return {"name": self.name, "temperature": self.temperature, **self._options}

    def mixer_config(self) -> dict:
        return {"method": "fusion", "adapters": list(self.members), "temperature": self.temperature, **self._options}


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

    def __init__(self, *members, weights=None, name: str | None = None, normalize_weights: bool = False):
        super().__init__(*members)
        if not all(isinstance(m, str) for m in self.members):
            raise PeftlabError("Average takes adapter names only")
        n = len(self.members)
        weights = tuple(weights if weights is not None else [1.0 / n] * n)
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise PeftlabError(f"Average weights {list(weights)} must be finite numbers, one per adapter")
        weights = tuple(float(w) for w in weights)
        if len(weights) != n:
            raise PeftlabError(f"Average weights {list(weights)} must have {n} entries, one per adapter")
        if normalize_weights:   # AdapterHub's average_adapter default (model_mixin.py:1770-1775): weights / their sum
            total = sum(weights)
            if total == 0:
                raise PeftlabError(f"Average weights {list(weights)} sum to 0 and cannot be normalized")
            weights = tuple(w / total for w in weights)
        self.weights = weights
        self.name = name or "_".join(("avg", *self.members))

    def options(self):
        return {"weights": list(self.weights), "name": self.name}


class Split(Block):
    """Split the sequence: consecutive positions go to the members, `Split("a", "b", splits=[3, 5])` runs a on
    positions 0-2 and b on 3-7 at every module (AdapterHub's Split). `splits` may be one int for all."""

    kind = "split"

    def __init__(self, *members, splits):
        super().__init__(*members)
        sizes = [splits] * len(self.members) if isinstance(splits, int) and not isinstance(splits, bool) else splits
        sizes = tuple(sizes) if isinstance(sizes, (list, tuple)) else ()
        if len(sizes) != len(self.members) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                      for s in sizes):
            raise PeftlabError(f"Split splits {splits!r} must be {len(self.members)} positive ints, one per member "
                               f"(or one int for all)")
        self.splits = sizes

    def options(self):
        return {"splits": list(self.splits)}


class AverageOutputs(Block):
    """At every module, the members' outputs mixed with fixed weights: h + Σ w_i (y_i - h) — with weights
    summing to 1 (the default), the weighted mean of the outputs. AdapterHub's `Average` block; its own
    computation, which also divides by the number of members, is `compat="adapterhub"` (docs/fidelity.md).
    Nothing is created: the block is activated directly. (`Average` instead makes a new adapter whose
    *weights* are averaged.)"""

    kind = "average_outputs"

    def __init__(self, *members, weights=None, normalize_weights: bool = True, compat: str | None = None):
        super().__init__(*members)
        n = len(self.members)
        weights = tuple(weights if weights is not None else [1.0 / n] * n)
        if len(weights) != n or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                                        for w in weights):
            raise PeftlabError(f"AverageOutputs weights {list(weights)} must be {n} finite numbers, one per member")
        if compat not in (None, "adapterhub"):
            raise PeftlabError(f"AverageOutputs.compat: {compat!r} is not None or 'adapterhub'")
        total = sum(weights)
        if normalize_weights and total == 0:
            raise PeftlabError(f"AverageOutputs weights {list(weights)} sum to 0 and cannot be normalized; "
                               f"pass normalize_weights=False")
        self.weights = tuple(float(w) / total if normalize_weights else float(w) for w in weights)
        self.compat = compat

    def options(self):
        return {"weights": list(self.weights), "normalize_weights": False, "compat": self.compat}


# --- nesting rules -----------------------------------------------------------------------------------

Stack.allowed_inside = (Fuse, WeightedSum, BatchSplit, Split, AverageOutputs)
BatchSplit.allowed_inside = (Stack, Fuse, WeightedSum, Split, AverageOutputs)
ParallelBlock.allowed_inside = (Stack, Fuse, WeightedSum, Split, AverageOutputs)
Split.allowed_inside = (Stack,)
AverageOutputs.allowed_inside = (Stack,)
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
