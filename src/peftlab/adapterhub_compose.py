"""AdapterHub's compositions as peftlab blocks, and its `average_adapter` (docs/adapterhub_compositions.md).

    block = pl.adapterhub.block_from_setup(ah_setup.to_dict(), model)   # or the dict of adapter_setup.json
    pl.activate(model, block)
    pl.adapterhub.average_adapter(model, "avg", ["a", "b"], weights=[1, 3])   # model.average_adapter(...)

AdapterHub's block (adapters 1.3 composition.py) -> peftlab's: `Stack` -> `pl.Stack(compat="adapterhub")` (its
LoRAs chained), `Fuse` -> `pl.Fuse` (the AdapterHub fusion attached over those adapters), `Parallel` ->
`pl.ParallelBlock`, `BatchSplit(batch_sizes=)` -> `pl.BatchSplit(sizes=)`, `Split(splits=)` ->
`pl.Split(splits=)`, `Average(weights=)` -> `pl.AverageOutputs(weights=, compat="adapterhub")`. `MultiTask`
(rows chosen by `task_ids`) has no block: peftlab routes rows with `adapter_names=[...]`.
"""
from __future__ import annotations

from torch import nn

from .average import average
from .blocks import AverageOutputs, BatchSplit, Block, Fuse, ParallelBlock, Split, Stack
from .core import activate
from .errors import PeftlabError
from .state import controller_of

# AdapterHub's combine_strategy (model_mixin.py:1725-1729) -> peftlab's Average `combine`
STRATEGIES = {"linear": "linear", "lora_linear_only_negate_b": "linear_negate_b", "lora_delta_w_svd": "svd"}


def block_from_setup(setup, model: nn.Module | None = None):
    """The peftlab block of an AdapterHub composition: its `to_dict()` form ({"type": ..., "children": [...],
    "kwargs": {...}}, as `save_adapter_setup` writes it), a name, or a list of names (a Stack). With `model`,
    a Fuse is the AdapterHub fusion attached there over the same adapters, with its settings."""
    if isinstance(setup, str):
        return setup
    if isinstance(setup, (list, tuple)):
        return Stack(*[block_from_setup(child, model) for child in setup], compat="adapterhub")
    if not isinstance(setup, dict) or not isinstance(setup.get("children"), list):
        raise PeftlabError(f"AdapterHub setup {setup!r}: expected a name or a mapping with 'type' and 'children'")
    kind, kwargs = setup.get("type"), dict(setup.get("kwargs") or {})
    if kind == "single":
        return _single(setup["children"])
    children = [block_from_setup(child, model) for child in setup["children"]]
    if kind == "Stack":
        return Stack(*children, compat="adapterhub")
    if kind == "Fuse":
        return _fuse(children, model)
    if kind == "Parallel":
        return ParallelBlock(*children)
    if kind == "BatchSplit":
        return BatchSplit(*children, sizes=_per_child(kwargs, "batch_sizes", len(children)))
    if kind == "Split":
        return Split(*children, splits=_per_child(kwargs, "splits", len(children)))
    if kind == "Average":   # from_dict's Average(*children, weights=...) normalizes again (composition.py:143-159)
        return AverageOutputs(*children, weights=kwargs.get("weights"), normalize_weights=True, compat="adapterhub")
    if kind == "MultiTask":
        raise PeftlabError("AdapterHub's MultiTask (rows chosen by task_ids) has no peftlab block: route rows with "
                           "model(..., adapter_names=[...]) instead")
    raise PeftlabError(f"AdapterHub setup: unknown block type {kind!r}")


def _single(children) -> str:
    if len(children) != 1 or not isinstance(children[0], str):
        raise PeftlabError(f"AdapterHub setup: a 'single' entry holds one adapter name, got {children!r}")
    return children[0]


def _per_child(kwargs: dict, key: str, n: int) -> list[int]:
    value = kwargs.get(key)
    if value is None:
        raise PeftlabError(f"AdapterHub setup: the block needs '{key}'")
    return [value] * n if isinstance(value, int) else value


def _fuse(children, model) -> Fuse:
    """The Fuse block of the AdapterHub fusion attached over `children`, else a new one's (compat="adapterhub")."""
    if not all(isinstance(c, str) for c in children):
        raise PeftlabError("AdapterHub setup: peftlab fuses adapter names only (no Stack inside a Fuse)")
    controller = controller_of(model) if model is not None else None
    for name, attachment in (controller.adapters.items() if controller is not None else ()):
        config = attachment.config
        if config.method == "fusion" and list(config.adapters) == children:
            options = {k: getattr(config, k) for k in Fuse.OPTIONS}
            return Fuse(*children, name=name, temperature=config.temperature, **options)
    return Fuse(*children, compat="adapterhub")


def setup_to_dict(block) -> dict | str:
    """The AdapterHub `to_dict()` form of a peftlab block (the inverse of `block_from_setup`)."""
    if isinstance(block, str):
        return {"type": "single", "children": [block]}
    if isinstance(block, tuple):
        block = Stack(*block)
    kinds = {Stack: "Stack", Fuse: "Fuse", ParallelBlock: "Parallel", BatchSplit: "BatchSplit", Split: "Split",
             AverageOutputs: "Average"}
    if not isinstance(block, Block) or type(block) not in kinds:
        raise PeftlabError(f"{block!r} has no AdapterHub composition block")
    if isinstance(block, AverageOutputs) and block.compat != "adapterhub":
        raise PeftlabError("AverageOutputs without compat='adapterhub' computes what AdapterHub's Average does not")
    out = {"type": kinds[type(block)], "children": [setup_to_dict(m) for m in block.members]}
    kwargs = {BatchSplit: lambda b: {"batch_sizes": list(b.sizes)}, Split: lambda b: {"splits": list(b.splits)},
              AverageOutputs: lambda b: {"weights": list(b.weights)}}.get(type(block))
    if kwargs is not None:
        out["kwargs"] = kwargs(block)
    return out


def average_adapter(model: nn.Module, adapter_name: str, adapter_list, weights=None, combine_strategy: str = "linear",
                    normalize_weights: bool = True, set_active: bool = False, svd_rank: int | None = None) -> str:
    """AdapterHub's `model.average_adapter(...)` (model_mixin.py:1693-1815), same arguments and defaults: a
    new adapter, the members averaged in weight space. `adapter_list` may map names to weights."""
    if isinstance(adapter_list, dict):
        adapter_list, weights = list(adapter_list), list(adapter_list.values())
    members = list(adapter_list)
    if not members:
        raise PeftlabError("average_adapter: no adapters to average")
    if combine_strategy not in STRATEGIES:
        raise PeftlabError(f"average_adapter: combine_strategy {combine_strategy!r} is not one of {list(STRATEGIES)}")
    if weights is None:   # equal weights, not normalized again (model_mixin.py:1766-1768)
        weights, normalize_weights = [1.0 / len(members)] * len(members), False
    average(model, members, weights, adapter_name, combine=STRATEGIES[combine_strategy],
            normalize_weights=normalize_weights, svd_rank=svd_rank)
    if set_active:
        activate(model, adapter_name)
    return adapter_name
