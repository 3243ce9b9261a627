"""The PHM weights of an attachment, built together: one `kronecker_sums` node per layer shape per forward.

Every PHM layer registers with its attachment's bank. The first layer to ask for its weight in a forward
builds the weights of its whole shape group at once; the others take theirs from that build. A build is
reused while, for the asking layer, it is still exact: its rule and block tensors not modified in place
since (version counters, storage), and the same grad / inference mode. The model's forward pre-hook
drops every build, so each forward starts afresh (and sees tensors swapped in, e.g. by
`torch.func.functional_call`); the checks cover calls that enter a submodule directly (`generate()` runs
the encoder on its own) after an optimizer step.
"""
from __future__ import annotations

import torch

from ..ops.phm import kronecker_sums


def _mode() -> tuple[bool, bool]:
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def _stamp(tensor: torch.Tensor) -> tuple:
    return tensor, tensor._version, tensor.data_ptr(), tensor.requires_grad


def _unchanged(stamp: tuple) -> bool:
    tensor, version, pointer, requires_grad = stamp
    return tensor._version == version and tensor.data_ptr() == pointer and tensor.requires_grad == requires_grad


def _sources(layer) -> tuple[torch.Tensor, ...]:
    return (*layer.rule.tensors(), *layer.blocks.tensors())


class _ShapeGroup:
    """PHM layers with the same n and block factor shapes, and their latest weights."""

    def __init__(self):
        self.layers, self.weights, self.stamps, self.mode = [], None, None, None

    def fresh_for(self, index: int) -> bool:
        return self.weights is not None and self.mode == _mode() and all(map(_unchanged, self.stamps[index]))

    def build(self) -> None:
        rules, rule_of, position = [], [], {}
        for layer in self.layers:
            if id(layer.rule) not in position:
                position[id(layer.rule)] = len(rules)
                rules.append(layer.rule.value())
            rule_of.append(position[id(layer.rule)])
        factors = [layer.blocks.tensors() for layer in self.layers]
        rights = [f[1] for f in factors] if len(factors[0]) == 2 else None
        self.weights = kronecker_sums(rules, rule_of, [f[0] for f in factors], rights)
        self.stamps = [tuple(_stamp(t) for t in _sources(layer)) for layer in self.layers]
        self.mode = _mode()

    def clear(self) -> None:
        self.weights = self.stamps = self.mode = None

    def __getstate__(self):          # copies and pickles carry no autograd graph (deepcopy of a model)
        return {**self.__dict__, "weights": None, "stamps": None, "mode": None}


class PHMBank:
    def __init__(self):
        self.groups: dict[tuple, _ShapeGroup] = {}

    def add(self, layer) -> None:
        key = (tuple(layer.rule.value().shape), *(tuple(t.shape) for t in layer.blocks.tensors()))
        group = self.groups.setdefault(key, _ShapeGroup())
        layer.__dict__["_bank_slot"] = (group, len(group.layers))
        group.layers.append(layer)

    def weight(self, layer) -> torch.Tensor:
        group, index = layer.__dict__["_bank_slot"]
        if not group.fresh_for(index):
            group.build()
        return group.weights[index]

    def clear(self, *_hook_args) -> None:
        for group in self.groups.values():
            group.clear()
