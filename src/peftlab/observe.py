"""Opt-in observation of mixing weights (ATTEMPT's prompt attention, AdapterFusion's attention,
WeightedSum's weights) without state in forward.

A module calls `record(series, labels, weights)` during its forward; that is a no-op unless the caller
opened a `capture()` scope, which collects what was recorded in that scope only:

    with observe.capture() as seen:
        model(**batch)
    seen["encoder.3.fuse"]   # -> {"labels": [...], "weights": tensor(batch?, n)}

The runner logs these over training and `peftlab plot` draws them.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

_RECORDER: contextvars.ContextVar[dict | None] = contextvars.ContextVar("peftlab_recorder", default=None)


def record(series: str, labels: list[str], weights: torch.Tensor) -> None:
    """Record mixing weights (last dim = len(labels)) under `series`, if a capture scope is open."""
    seen = _RECORDER.get()
    if seen is not None:
        seen[series] = {"labels": list(labels), "weights": weights.detach().float().cpu()}


def capturing() -> bool:
    return _RECORDER.get() is not None


@contextlib.contextmanager
def capture():
    seen: dict = {}
    token = _RECORDER.set(seen)
    try:
        yield seen
    finally:
        _RECORDER.reset(token)
