"""What peftlab does around each call of a model that has adapters: per-row routing
(`adapter_names=[...]`), a ParallelBlock's copies of the batch, BatchSplit size checks, the batch's
`task_ids` (multi-task ATTEMPT), and the same for the whole of a `generate()` call.

One pair of forward hooks on the model (pre: take peftlab's keywords out and set this call's context;
post, always called: reset it) and one `generate` wrapper, installed by `install` when the Controller is
created and removed with it (journaled on the Controller's journal). transformers validates generate's
keyword arguments against the model's forward, so `adapter_names` and `task_ids` must leave there before
it looks. The context lives in context variables for one call only: forward stays pure, and calls in
other threads do not see each other's.
"""
from __future__ import annotations

import contextvars
import functools

import torch

from .blocks import BASE, BatchSplit, ParallelBlock, walk
from .config import closest
from .errors import PeftlabError
from .runtime import add_hook, set_attr
from .runtime.routing import Route, current, reset_route, routed, row_groups, set_route
from .state import Controller, controller_of

_TASK_IDS: contextvars.ContextVar = contextvars.ContextVar("peftlab_task_ids", default=None)
_GENERATION: contextvars.ContextVar = contextvars.ContextVar("peftlab_generation", default=None)
BATCH_KEYS = ("input_ids", "inputs_embeds", "decoder_input_ids", "decoder_inputs_embeds")


class Generation:
    """One `generate()` call: the input length each prompt hook saw in the call's first forward (a later
    hook sees the earlier hooks' prompts in front of the input)."""

    def __init__(self):
        self.input_lengths: dict[int, int] = {}


def current_task_ids():
    return _TASK_IDS.get()


def generation() -> Generation | None:
    """The `generate()` call under way, or None outside one."""
    return _GENERATION.get()


def generating() -> bool:
    """True inside `generate()`, where the batch may be the task ids' rows repeated (beams, samples)."""
    return _GENERATION.get() is not None


def make_route(controller: Controller | None, adapter_names) -> Route:
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)) or not adapter_names:
        raise PeftlabError(f"adapter_names must be a non-empty list of adapter names, one per row; "
                           f"got {adapter_names!r}")
    known = controller.adapters if controller is not None else {}
    merged = next((n for n, a in known.items() if any(p.merged for _, p in a.parts)), None)
    if merged is not None:
        raise PeftlabError(f"cannot route rows while adapter '{merged}' is merged into the base weights "
                           f"(it would act on every row); unmerge it first")
    for n in adapter_names:
        if n != BASE and n not in known:
            raise PeftlabError(f"adapter_names: no adapter named {n!r}{closest(str(n), known)}; "
                               f"attached: {', '.join(known) or 'none'} (or '{BASE}' for the base model)")
    return Route(adapter_names)


def route(model, adapter_names):
    """`with pl.route(model, ["a", "b", "__base__"]): ...` routes rows for every call inside."""
    return routed(make_route(controller_of(model), adapter_names))


def row_mask(controller: Controller | None, name: str, n_rows: int):
    """For methods that act outside Hosts (prompts): a bool tensor of the rows that adapter `name` serves
    in the current call (per-row routing, or a top-level BatchSplit / ParallelBlock), or None when every
    row runs the same setup (then the active set decides)."""
    route_now = current()
    block = route_now if route_now is not None and route_now.names else (controller.active if controller else ())
    if not isinstance(block, (Route, BatchSplit, ParallelBlock)):
        return None
    groups, _ = row_groups(block, n_rows)
    mask = torch.zeros(n_rows, dtype=torch.bool)
    for member, rows in groups:
        if name in _names(member):
            mask[rows] = True
    return mask


def _names(member) -> tuple[str, ...]:
    if isinstance(member, str):
        return (member,)
    if isinstance(member, tuple):
        return member
    return tuple(member.adapter_names())


def batch_size(args, kwargs) -> int | None:
    for key in BATCH_KEYS:
        value = kwargs.get(key)
        if torch.is_tensor(value):
            return value.shape[0]
    if args and torch.is_tensor(args[0]):
        return args[0].shape[0]
    return None


def _check_batch_splits(block, rows: int | None) -> None:
    for inner in walk(block):
        if isinstance(inner, BatchSplit) and rows is not None and sum(inner.sizes) != rows:
            raise PeftlabError(f"BatchSplit sizes {list(inner.sizes)} sum to {sum(inner.sizes)}, "
                               f"but the batch has {rows} rows")


def _replicate(args, kwargs, rows: int, copies: int):
    def rep(v):
        return v.repeat(copies, *([1] * (v.dim() - 1))) if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
    return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}


class CallHooks:
    """The model's pre/post forward hooks. Tokens are a stack, so nested model calls reset correctly."""

    def __init__(self, controller: Controller):
        self.controller = controller
        self.tokens: list = []

    def pre(self, module, args, kwargs):
        names = kwargs.pop("adapter_names", None)
        task_token = _TASK_IDS.set(kwargs.pop("task_ids")) if self._takes_task_ids(kwargs) else None
        block, rows = self.controller.active, batch_size(args, kwargs)
        new_route = None
        if names is not None:
            new_route = make_route(self.controller, names)
            if rows is not None and rows % max(len(names), 1):
                raise PeftlabError(f"adapter_names has {len(names)} entries for a batch of {rows} rows")
        elif current() is None and isinstance(block, ParallelBlock) and rows is not None:
            copies = len(block.members)
            args, kwargs = _replicate(args, kwargs, rows, copies)
            new_route = Route([], replicate=copies)
        if new_route is None and current() is None:
            _check_batch_splits(block, rows)
        self.tokens.append((set_route(new_route) if new_route is not None else None, task_token))
        return args, kwargs

    def post(self, module, args, output):
        route_token, task_token = self.tokens.pop() if self.tokens else (None, None)
        if route_token is not None:
            reset_route(route_token)
        if task_token is not None:
            _TASK_IDS.reset(task_token)
        return output

    def _takes_task_ids(self, kwargs) -> bool:
        """`task_ids` are peftlab's while a prompt adapter is attached (multi-task ATTEMPT reads them);
        otherwise they stay, and the model refuses an argument it does not know, as it would alone."""
        return "task_ids" in kwargs and bool(self.controller.prompt_providers)

    def generate(self, original, *args, **kwargs):
        names = kwargs.pop("adapter_names", None)
        task_token = _TASK_IDS.set(kwargs.pop("task_ids")) if self._takes_task_ids(kwargs) else None
        generation_token = _GENERATION.set(Generation())
        try:
            return self._generate_routed(original, names, args, kwargs)
        finally:
            _GENERATION.reset(generation_token)
            if task_token is not None:
                _TASK_IDS.reset(task_token)

    def _generate_routed(self, original, names, args, kwargs):
        if names is not None:
            with routed(make_route(self.controller, names)):
                return original(*args, **kwargs)
        block, rows = self.controller.active, batch_size(args, kwargs)
        if not isinstance(block, ParallelBlock) or rows is None:
            return original(*args, **kwargs)
        # ParallelBlock: generate for k copies of the batch at once, copy i routed to member i.
        args, kwargs = _replicate(args, kwargs, rows, len(block.members))
        with routed(Route([m for m in block.members for _ in range(rows)])):
            return original(*args, **kwargs)


def install(model, controller: Controller) -> None:
    """Put the call hooks and the `generate` wrapper on the model (undone by the controller's journal)."""
    hooks = CallHooks(controller)
    add_hook(model.register_forward_pre_hook, hooks.pre, controller.journal, with_kwargs=True)
    add_hook(model.register_forward_hook, hooks.post, controller.journal, always_call=True)
    if callable(getattr(model, "generate", None)):
        original = model.generate
        wrapper = functools.wraps(original)(functools.partial(hooks.generate, original))
        set_attr(model, "generate", wrapper, controller.journal)
