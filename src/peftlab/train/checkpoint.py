"""Checkpoints: the trainable tensors (safetensors), optimizer and scheduler state, RNG states and the
loop's counters. Written to a temporary folder and renamed, so a kill never leaves half a checkpoint.

    RUN_DIR/checkpoints/last/   the latest (what --resume continues from)
    RUN_DIR/checkpoints/best/   the best by the average validation metric
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import PeftlabError

WEIGHTS, STATE, OPTIMIZER = "trainable.safetensors", "trainer_state.json", "optimizer.pt"


def save_checkpoint(directory: Path, weights: dict, state: dict, optimizer=None, scheduler=None) -> None:
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, str(tmp / WEIGHTS))
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)


def _recover(directory: Path) -> Path:
    """If a kill fell between the two renames, the previous checkpoint sits at `.old`."""
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.exists():
        old.rename(directory)
    return directory


def load_weights(model, directory: Path) -> dict:
    """Copy saved trainable tensors into the model; returns the loop state saved beside them."""
    directory = _recover(Path(directory))
    if not (directory / WEIGHTS).exists():
        raise PeftlabError(f"{directory}: no checkpoint here ({WEIGHTS} missing)")
    tensors = load_file(str(directory / WEIGHTS))
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params or params[name].shape != tensor.shape:
            raise PeftlabError(f"{directory / WEIGHTS}: tensor '{name}' does not fit this model")
        with torch.no_grad():
            params[name].copy_(tensor.to(params[name].dtype))
    return json.loads((directory / STATE).read_text())


def load_training_state(directory: Path, optimizer, scheduler) -> None:
    blob = torch.load(Path(directory) / OPTIMIZER, weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def has_checkpoint(run_dir: Path) -> bool:
    return (_recover(Path(run_dir) / "checkpoints" / "last") / STATE).exists()


def load_state(directory: Path) -> dict:
    return json.loads((_recover(Path(directory)) / STATE).read_text())
