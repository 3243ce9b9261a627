"""`AttachTarget`: the only door through which a method's builder changes a model.

Each operation is journaled on the attachment, so a builder that raises halfway leaves nothing behind
and `detach` undoes exactly what the builder did.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .errors import PeftlabError
from .runtime import Part, add_hook, add_part, base_module, ensure_host, get_module, named_base_modules, \
    named_base_parameters
from .state import HOME, Attachment, Controller
from .targeting import LayerSelection, Site, feature_dims, find_stacks, is_projection, module_exists, \
    resolve_patterns, resolve_slot


def is_norm(module: nn.Module) -> bool:
    return "norm" in type(base_module(module)).__name__.lower()


class AttachTarget:
    def __init__(self, model: nn.Module, controller: Controller, attachment: Attachment, trainable: bool):
        self.model, self.controller, self.attachment = model, controller, attachment
        self.layout = controller.layout
        self.name = attachment.name
        self.journal = attachment.journal
        self.trainable = trainable

    # --- reading the model ---------------------------------------------------------------------
    @property
    def hf_config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        for attr in ("hidden_size", "d_model", "n_embd"):
            if isinstance(getattr(config, attr, None), int):
                return getattr(config, attr)
        raise PeftlabError(f"cannot tell the hidden size of {type(self.model).__name__}")

    def stacks(self) -> dict[str, tuple[str, int]]:
        return find_stacks(self.model, self.layout)

    def sites(self, slot: str, selection: LayerSelection = LayerSelection(), stacks=None) -> list[Site]:
        return resolve_slot(self.model, self.layout, slot, selection, stacks)

    def pattern_sites(self, patterns: Iterable[str], selection: LayerSelection = LayerSelection(),
                      accept: Callable[[nn.Module], bool] = is_projection) -> list[Site]:
        return resolve_patterns(self.model, self.layout, patterns, accept, selection)

    def module(self, path: str) -> nn.Module:
        """The base module at `path` (seen through any Host)."""
        return base_module(get_module(self.model, path))

    def exists(self, path: str) -> bool:
        return module_exists(self.model, path)

    def base_parameters(self) -> dict[str, nn.Parameter]:
        return dict(named_base_parameters(self.model))

    # --- changing the model --------------------------------------------------------------------
    def placement(self) -> dict:
        """Device and dtype for tensors shared across the model's parts (see `placement`)."""
        return placement(self.model)

    def width(self, path: str) -> int:
        """The width of what the module at `path` outputs (an embedding's dimension, a projection's
        out_features, else the model's hidden size)."""
        module = self.module(path)
        if isinstance(module, nn.Embedding):
            return module.embedding_dim
        dims = feature_dims(module)
        return dims[1] if dims else self.hidden_size

    def place(self, site: Site, part: Part) -> Part:
        """Put `part` into the Host at `site` (wrapping the module there if needed)."""
        base = self.module(site.path)
        part.to(**placement(base))
        part.train(base.training)   # a part attached to a model in eval mode starts in eval mode too
        host = ensure_host(self.model, site.path, site.stack, site.layer, self.controller.activation, self.journal)
        host.training = base.training
        add_part(host, self.name, part, self.journal)
        self.attachment.parts.append((site.path, part))
        self.attachment.hosts.add(site.path)
        return part

    def note(self, kind: str, path: str) -> None:
        """Record something the method acts on outside Slots ("attention layers", "input prompt"), for
        `summary`."""
        self.attachment.acts_on.setdefault(kind, set()).add(path)

    def home(self) -> nn.Module:
        """This adapter's module for tensors shared across sites (e.g. a shared PHM rule)."""
        holder = self.model._modules.get(HOME)
        if holder is None:
            holder = nn.ModuleDict()
            self.model._modules[HOME] = holder
            self.journal.record(lambda: len(holder) == 0 and self.model._modules.pop(HOME, None))
        if self.name not in holder:
            holder[self.name] = nn.Module()
            self.journal.record(lambda: holder.pop(self.name) if self.name in holder else None)
        return holder[self.name]

    def claim(self, names: Iterable[str], train: bool = True) -> None:
        """Train these base parameters in place (restored to their values on detach)."""
        names = list(names)
        params = self.base_parameters()
        missing = [n for n in names if n not in params]
        if missing:
            raise PeftlabError(f"no base parameter named '{missing[0]}'")
        chosen = {n: params[n] for n in names}
        self.controller.claim(chosen, self.name, train, self.journal)
        for n in chosen:
            if n not in self.attachment.claimed:
                self.attachment.claimed.append(n)

    def add_hook(self, register: Callable, fn: Callable, **kwargs) -> None:
        add_hook(register, fn, self.journal, **kwargs)

    # --- switches every method accepts ---------------------------------------------------------
    def apply_generic_switches(self, config) -> None:
        modules = dict(named_base_modules(self.model))
        wanted: list[str] = []
        if config.unfreeze_layer_norms:
            wanted += [p for p, m in modules.items() if p and is_norm(m)]
        if config.unfreeze_lm_head and self.layout.lm_head in modules:
            wanted.append(self.layout.lm_head)
        if config.train_head:
            wanted += [h for h in self.layout.heads if h in modules]
        prefixes = tuple(f"{path}." for path in wanted)
        self.claim([n for n in self.base_parameters() if n.startswith(prefixes)])


def placement(base: nn.Module) -> dict:
    """Where a new tensor for `base` lives: its device, in its dtype when that is float32/64, else
    float32 (adapters train in full precision beside a half-precision base)."""
    tensor = next(iter(base.parameters()), None)
    if tensor is None:
        return {}
    dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    return {"device": tensor.device, "dtype": dtype}
