"""What peftlab keeps on a model, all in one place: the `Controller`.

A Controller lives at `model._peftlab` (a plain attribute) from the first attach to the last detach and
is the only owner of per-model state: the attachments, the active setup (published to every Host through
one `Activation`), which adapters train, base parameters trained in place, the prompt providers, the
attention modules' extensions and implementation switches, and the model's call hooks and `generate`
wrapper (calls.py). Everything it installs is journaled on its own journal and undone with the last
detach. The adapters' own shared tensors live in `model.peftlab_adapters` (a ModuleDict, so `.to()`,
`parameters()` and accelerate see them). Nothing is kept outside the model: a model dropped with
adapters attached is freed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import MethodConfig
from .layouts import Layout
from .runtime import Activation, Journal, Part, named_base_parameters

HOME = "peftlab_adapters"
CONTROLLER = "_peftlab"


@dataclass
class Attachment:
    name: str
    config: MethodConfig
    journal: Journal = field(default_factory=Journal)
    parts: list[tuple[str, Part]] = field(default_factory=list)   # (host path, part)
    claimed: list[str] = field(default_factory=list)              # base parameters trained in place
    hosts: set[str] = field(default_factory=set)                  # modules wrapped with its parts
    acts_on: dict[str, set[str]] = field(default_factory=dict)     # what else it acts on, by kind (summary)
    trainable: bool = True                                         # False: attached (or loaded) frozen
    learned: list[nn.Parameter] = field(default_factory=list)      # its own tensors the method trains
    # base tensors it was saved with (trained in place), as loaded: several adapters may have trained
    # one base tensor differently; a method mixing them (WeightedSum) reads each one's own values
    loaded_base: dict[str, torch.Tensor] = field(default_factory=dict)


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
        self.activation = Activation()
        self.training: tuple[str, ...] | None = None   # None: the active adapters train
        self.original_flags = {n: p.requires_grad for n, p in named_base_parameters(model)}
        self.claims: dict[str, dict[str, bool]] = {}   # base parameter -> {adapter: trains it}
        self.originals: dict[str, torch.Tensor] = {}
        self.base_count = sum(p.numel() for p in {id(p): p for _, p in named_base_parameters(model)}.values())
        self.prompt_providers: dict[str, nn.Module] = {}    # adapter -> prompt provider, in hook order
        self.switched_configs: list[list] = []              # [config, original implementation, users]
        self.journal = Journal()                            # what the controller itself installed

    # --- the active setup ---------------------------------------------------------------------------
    @property
    def active(self):
        return self.activation.block

    def active_names(self) -> tuple[str, ...]:
        """Every adapter the active setup runs (members, mixers), in order."""
        return self.activation.names

    def is_active(self, name: str) -> bool:
        return name in self.activation.names

    # --- base parameters trained in place -----------------------------------------------------------
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

    # --- what trains ----------------------------------------------------------------------------------
    def training_names(self) -> set[str]:
        """The adapters whose tensors train now (see the class doc)."""
        names = self.activation.names
        chosen = set(names if self.training is None else self.training)
        frozen = {m for n in names if n in self.adapters for m in self.adapters[n].config.frozen_members()}
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

    # --- attention implementation switches (attention.py) ---------------------------------------------
    def switch_config(self, config, implementation: str, journal: Journal) -> None:
        """Point `config` at `implementation` while some adapter needs it (journaled on `journal`);
        several adapters may share one config: it goes back when the last of them is detached."""
        entry = next((e for e in self.switched_configs if e[0] is config), None)
        if entry is None:
            entry = [config, config.__dict__.get("_attn_implementation_internal"), 0]
            self.switched_configs.append(entry)
            config.__dict__["_attn_implementation_internal"] = implementation
        entry[2] += 1

        def release():
            entry[2] -= 1
            if entry[2] == 0:
                config.__dict__["_attn_implementation_internal"] = entry[1]
                self.switched_configs.remove(entry)

        journal.record(release)


def controller_of(model: nn.Module) -> Controller | None:
    return model.__dict__.get(CONTROLLER)


def home_of(model: nn.Module) -> nn.ModuleDict | None:
    return model._modules.get(HOME)
