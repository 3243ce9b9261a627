"""What adapters place around a module: `Part`s and their roles, and how one call runs them.

A part has one role around the call of its host's base module:
  tap     sees the module's input x, returns nothing (carries a sublayer's input to a parallel branch);
  input   x -> x' (IA3 on the FFN input);
  add     x -> a delta added to the module's output (LoRA, biases);
  output  y -> y' (bottleneck adapters, scales);
  mix     composition only: mixes several adapters' outputs (see evaluate.py).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PeftlabError

ROLES = ("tap", "input", "add", "output", "mix")


class Part(nn.Module):
    """Base of the modules placed in a Host. `role` says where it acts (see the module doc)."""

    role: str = "output"
    merged: bool = False     # folded into the base weights (merging.py): the part then sits out

    def skipped(self, host) -> bool:
        """True to sit this forward out (AdapterDrop). Must not change any state."""
        return False


def live(host, name) -> list[Part]:
    """The parts of adapter `name` that act at `host` in this forward."""
    if not isinstance(name, str) or name not in host.parts:
        return []
    return [p for p in host.parts[name] if not p.merged and not p.skipped(host)]


def run_pre(parts, x):
    """The module's input: taps see it, then input parts change it, in order."""
    for part in parts:
        if part.role == "tap":
            part(x)
    for part in parts:
        if part.role == "input":
            x = part(x)
    return x


def run_post(parts, x_in, h):
    """The module's output: additive parts add f(x_in), then output parts map h -> h', in order. An
    additive part may offer `add_to(h, x)`, the same sum computed in fewer passes (e.g. inside a GEMM)."""
    for part in parts:
        if part.role == "add":
            h = part.add_to(h, x_in) if hasattr(part, "add_to") else h + part(x_in)
    for part in parts:
        if part.role == "output":
            h = part(h)
    return h


class Handoff:
    """One tensor passed from one part to another within the same forward: a tap on a sublayer's input
    to the part on its output, the key projection's output to the value part, an attention hook's term
    to the part after W_o. `take` empties it, so a tensor never leaks into a later call."""

    def __init__(self, missing: str):
        self.missing, self.value = missing, None   # `missing`: the error if taken before it was put

    def put(self, tensor: torch.Tensor) -> None:
        self.value = tensor

    def take(self, required: bool = True) -> torch.Tensor | None:
        value, self.value = self.value, None
        if value is None and required:
            raise PeftlabError(self.missing)
        return value


class HandoffTap(Part):
    """Puts what its host sees into a Handoff and changes nothing: role "tap" sees the module's input,
    role "output" its output (returned unchanged)."""

    def __init__(self, handoff: Handoff, role: str = "tap"):
        super().__init__()
        self.handoff, self.role = handoff, role

    def forward(self, h):
        self.handoff.put(h)
        return h if self.role == "output" else None


def first_input(args, kwargs):
    """The tensor a module is called on (positional, or `hidden_states` / `input`)."""
    if args:
        return args[0]
    return kwargs.get("hidden_states", kwargs.get("input"))


def replace_first_input(args, kwargs, x):
    if args:
        return (x, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else "input"
    return args, {**kwargs, key: x}
