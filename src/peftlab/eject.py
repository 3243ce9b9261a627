"""`eject_prefix`: a reparameterized prefix becomes the flat prefix it computes (Li & Liang's step
before inference): the same outputs without the MLP, and a smaller saved adapter."""
from __future__ import annotations

import torch
from torch import nn

from .core import adapters, attach, detach, pick, require, set_active
from .errors import PeftlabError
from .methods.prefix import PrefixTuning
from .runtime import named_base_parameters


def eject_prefix(model: nn.Module, name: str | None = None) -> nn.Module:
    """Replace a reparameterized prefix by the flat prefix it computes: same outputs, no MLP to save."""
    controller = require(model)
    name = pick(controller, name)
    config = adapters(model)[name]
    if not isinstance(config, PrefixTuning):
        raise PeftlabError(f"eject_prefix needs a PrefixTuning adapter; '{name}' is {config.method}")
    if config.flat:
        return model
    prefix = model.peftlab_adapters[name].prefix.full()
    trainable = controller.adapters[name].trainable
    active = controller.active
    claimed = set(controller.adapters[name].claimed)   # e.g. a trained classifier head: keep its values
    kept = {n: p.detach().clone() for n, p in named_base_parameters(model) if n in claimed}
    flat = PrefixTuning.from_dict({**config.to_dict(), "flat": True})
    detach(model, name)
    attach(model, flat, name, trainable=trainable, activate=False)
    with torch.no_grad():
        model.peftlab_adapters[name].prefix.embedding.copy_(prefix)
        for n, p in named_base_parameters(model):
            if n in kept:
                p.copy_(kept[n])
    set_active(model, active)
    return model
