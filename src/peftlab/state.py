"""What peftlab keeps on a model: its attachments, the active set, and base parameters trained in place.

A `Controller` lives at `model._peftlab` (a plain attribute) from the first attach to the last detach;
the adapters' own shared tensors live in `model.peftlab_adapters` (a ModuleDict, so `.to()`,
`parameters()` and accelerate see them). Both disappear with the last detach.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import MethodConfig
from .layouts import Layout
from .surgery import Journal, Part, named_base_parameters

HOME = "peftlab_adapters"


@dataclass
class Attachment:
    name: str
    config: MethodConfig
    journal: Journal = field(default_factory=Journal)
    parts: list[tuple[str, Part]] = field(default_factory=list)   # (slot path, part)
    claimed: list[str] = field(default_factory=list)              # base parameters trained in place
    slots: set[str] = field(default_factory=set)                  # modules wrapped with its parts
    acts_on: dict[str, set[str]] = field(default_factory=dict)     # what else it acts on, by kind (summary)
    trainable: bool = True                                         # False: attached (or loaded) frozen
    learned: list[nn.Parameter] = field(default_factory=list)      # its own tensors the method trains


class Controller:
    """Per-model bookkeeping. Base parameters trained in place are shared: each is claimed by the
    adapters that train it, and restored to its original value when the last claim is released.

    What trains is what is active: after every change of the active setup, of the attachments or of
    `training`, `sync_training` sets `requires_grad` on every adapter tensor and claimed base tensor.
    An adapter trains when it is in the training set (the active adapters, or the names given to
    `pl.train_adapter`), was attached trainable, and is not a member frozen by an active mixer (Fuse)."""

    def __init__(self, model: nn.Module, layout: Layout):
        self.layout = layout
        self.adapters: dict[str, Attachment] = {}
        self.active: object = ()   # a tuple of names or a composition block
        self.active_names: tuple[str, ...] = ()   # every adapter name the active setup runs
        self.training: tuple[str, ...] | None = None   # None: the active adapters train
        self.original_flags = {n: p.requires_grad for n, p in named_base_parameters(model)}
        self.claims: dict[str, dict[str, bool]] = {}   # base parameter -> {adapter: trains it}
        self.originals: dict[str, torch.Tensor] = {}
        self.base_count = sum(p.numel() for p in {id(p): p for _, p in named_base_parameters(model)}.values())

    @torch.no_grad()
    def claim(self, params: dict[str, nn.Parameter], adapter: str, train: bool, journal: Journal) -> None:
        for name, param in params.items():
            if adapter in self.claims.get(name, ()):
                continue
            if name not in self.claims:
                self.claims[name] = {}
                self.originals[name] = param.detach().clone()
            self.claims[name][adapter] = train
            journal.record(lambda name=name, param=param: self.release(name, param, adapter))

    @torch.no_grad()
    def release(self, name: str, param: nn.Parameter, adapter: str) -> None:
        holders = self.claims.get(name, {})
        holders.pop(adapter, None)
        if not holders:
            param.copy_(self.originals.pop(name))
            param.requires_grad_(False)
            self.claims.pop(name, None)

    def training_names(self) -> set[str]:
        """The adapters whose tensors train now (see the class doc)."""
        chosen = set(self.active_names if self.training is None else self.training)
        frozen = {m for n in self.active_names if n in self.adapters
                  for m in self.adapters[n].config.frozen_members()}
        return {n for n in chosen - frozen if n in self.adapters and self.adapters[n].trainable}

    def sync_training(self, model: nn.Module) -> None:
        training = self.training_names()
        for name, attachment in self.adapters.items():
            for param in attachment.learned:
                param.requires_grad_(name in training)
        if self.claims:
            params = dict(named_base_parameters(model))
            for pname, holders in self.claims.items():
                params[pname].requires_grad_(any(train and a in training for a, train in holders.items()))


def controller_of(model: nn.Module) -> Controller | None:
    return model.__dict__.get("_peftlab")


def home_of(model: nn.Module) -> nn.ModuleDict | None:
    return model._modules.get(HOME)
