"""Out of peftlab: the plain `transformers` model, with the active adapters merged into its weights
(`merge_and_unload`) or without them (`unload`), as HF PEFT's functions of the same names give it.

`save_pretrained` on the result writes the model's own keys (no `base_layer` or `parts`), so
`from_pretrained` reloads it with the same outputs. Base tensors an adapter trains in place (a task
head, layer norms) keep their trained values in `merge_and_unload`."""
from __future__ import annotations

import torch
from torch import nn

from .core import detach
from .errors import PeftlabError
from .merging import merge, unmerge
from .runtime import named_base_parameters
from .state import controller_of


def merge_and_unload(model: nn.Module, names=None) -> nn.Module:
    """Merge `names` (default: the active adapters) into the base weights and remove every adapter."""
    controller = controller_of(model)
    if controller is None:
        return model
    names = tuple(controller.activation.names if names is None else ([names] if isinstance(names, str) else names))
    unknown = [n for n in names if n not in controller.adapters]
    if unknown:
        raise PeftlabError(f"merge_and_unload: no adapter named '{unknown[0]}' is attached")
    for name in names:      # prompts, prefixes and other input-side methods have no weight-space form
        if not getattr(controller.adapters[name].config, "mergeable", False):
            raise PeftlabError(f"adapter '{name}' ({controller.adapters[name].config.method}) cannot be merged "
                               f"into the weights; unload it without merging (pl.unload) or leave it out")
    done = []
    try:                    # an adapter with no weight-space form is refused, the model left as it was
        for name in names:
            merge(model, name)
            done.append(name)
    except PeftlabError:
        for name in reversed(done):
            unmerge(model, name)
        raise
    with torch.no_grad():
        merged = {key: p.detach().clone() for key, p in named_base_parameters(model)}
    unload(model)
    with torch.no_grad():
        for key, param in model.named_parameters():
            param.copy_(merged[key])
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the base model as it was before the first attach."""
    controller = controller_of(model)
    for name in list(controller.adapters) if controller is not None else []:
        detach(model, name)
    return model
