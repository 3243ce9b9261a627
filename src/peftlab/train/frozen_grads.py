"""The gradients of a frozen base that still enter gradient clipping: nlprunners' runscript.py never turns
`requires_grad` off for the base model, so every step computes the base's gradients; the optimizer holds
only the adapters, LayerNorms and head, and only their gradients are zeroed (nlpr/shared/runner.py:280), so
the base's gradients pile up across steps — and `clip_grad_norm_(model.parameters())` (runner.py:271)
takes them into the norm and scales them with the rest. With `train.clip_frozen_gradients` peftlab computes
the same sums (kept apart from `.grad`, so nothing else sees a trainable base) and clips with them."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ..errors import PeftlabError


class FrozenGradients:
    """Running sums of the gradients of the parameters that are frozen when the run starts."""

    def __init__(self, model: torch.nn.Module, enabled: bool):
        self.params = {n: p for n, p in model.named_parameters() if not p.requires_grad} if enabled else {}
        self.sums: dict[str, torch.Tensor] = {}

    @contextmanager
    def recording(self):
        """Forward and backward inside this block also give the frozen parameters gradients, which are
        added to the sums and taken off the parameters again."""
        for param in self.params.values():
            param.requires_grad_(True)
        try:
            yield
        finally:
            for name, param in self.params.items():
                param.requires_grad_(False)
                if param.grad is not None:
                    self.sums[name] = self.sums[name].add_(param.grad) if name in self.sums else param.grad
                    param.grad = None

    def tensors(self) -> list[torch.Tensor]:
        return list(self.sums.values())

    @torch.no_grad()
    def scale(self, max_norm: float | None, norm: torch.Tensor) -> None:
        """What clip_grad_norm_ does to every `.grad` it saw, these sums included."""
        if max_norm and self.sums:
            coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            for tensor in self.sums.values():
                tensor.mul_(coefficient.to(tensor.device))

    def state_dict(self) -> dict:
        return {name: tensor.detach().cpu() for name, tensor in self.sums.items()}

    def load_state_dict(self, state: dict, source) -> None:
        unknown = [name for name in state if name not in self.params]
        if unknown or (state and not self.params):
            raise PeftlabError(f"{source}: holds frozen-gradient sums ('{(unknown or list(state))[0]}') this run "
                               "does not keep (train.clip_frozen_gradients differs?)")
        self.sums = {name: tensor.to(self.params[name].device) for name, tensor in state.items()}
