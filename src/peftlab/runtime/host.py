"""The wrapper a module gets when an adapter places a part at it: it keeps the module as `base_layer`
(so detaching restores it) and runs the active setup's parts around each call (evaluate.py)."""
from __future__ import annotations

from torch import nn

from . import evaluate


class Activation:
    """The active setup of one model: the one value every Host of the model reads (published by the
    Controller; read-only in forward)."""

    def __init__(self):
        self.block: object = ()                 # a tuple of adapter names, or a composition block
        self.names: tuple[str, ...] = ()        # every adapter name the block runs

    def publish(self, block, names: tuple[str, ...]) -> None:
        self.block, self.names = block, names


class Host(nn.Module):
    """A module wrapped to run adapters' parts around it."""

    def __init__(self, base_layer: nn.Module, path: str, stack: str | None, layer: int | None,
                 activation: Activation):
        super().__init__()
        self.base_layer = base_layer
        self.parts = nn.ModuleDict()          # adapter name -> ModuleList of parts
        self.path, self.stack, self.layer = path, stack, layer
        self.__dict__["activation"] = activation   # shared with the model's other Hosts; not a submodule

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)  # transformers reads e.g. `.weight.dtype` of wrapped layers

    def forward(self, *args, **kwargs):
        return evaluate.run(self, args, kwargs)
