"""Checkpoints: the trainable tensors (safetensors), optimizer and scheduler state, RNG states and the
loop's counters. Nothing is pickled: tensors go to safetensors or to `torch.save` files that load with
`weights_only=True`, and RNG states are plain lists and ints. Every checkpoint is written to a `.tmp`
folder, flushed to disk, and renamed, so a kill never leaves half a checkpoint.

    RUN_DIR/checkpoints/last/       the latest (what --resume continues from)
    RUN_DIR/checkpoints/best/       the best by the average validation metric
    RUN_DIR/checkpoints/step-N/     older "last" checkpoints, kept when train.keep_last > 1
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import PeftlabError
from ..files import check_finite, content_digest, current_umask, regular_file, sha256_of, verify_digest, write_error

WEIGHTS, STATE, OPTIMIZER = "trainable.safetensors", "trainer_state.json", "optimizer.pt"
STATE_DIGEST = "peftlab_state_sha256"
FAULT_ENV = "PEFTLAB_KILL_AT"


def save_checkpoint(directory: Path, weights: dict, state: dict, optimizer=None, scheduler=None,
                    keep_last: int = 1, extra: dict | None = None) -> None:
    """Write `directory` atomically. With `keep_last` > 1 the checkpoint it replaces moves to
    `step-N` beside it, and only the newest `keep_last - 1` of those stay."""
    directory = Path(directory)
    _recover(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)      # a kill after the swap left a stale one
    tmp.mkdir(parents=True)
    try:
        _write_files(tmp, weights, state, optimizer, scheduler, extra)
    except (OSError, SafetensorError) as err:   # disk full: the previous checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise PeftlabError(f"{tmp}: cannot write the checkpoint ({write_error(err)}); {directory} is "
                           f"unchanged") from None
    fault_point("ckpt", int(state.get("step", 0)))   # test hook: a kill with the new one half-done
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _sync(directory.parent)
    if old.exists():
        _retire(old, keep_last, int(state.get("step", 0)))


def _write_files(tmp: Path, weights: dict, state: dict, optimizer, scheduler, extra=None) -> None:
    # the weights vouch for the counters saved with them (a hand-edited step is refused on load)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, str(tmp / WEIGHTS),
              metadata={STATE_DIGEST: content_digest(state)})
    os.chmod(tmp / WEIGHTS, 0o666 & ~current_umask())   # safetensors writes 0600; follow the user's umask
    if optimizer is not None:
        try:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), **({"extra": extra} if extra else {})}, tmp / OPTIMIZER)
        except RuntimeError as err:     # torch's zip writer reports a failed write (a full disk) so
            raise OSError(f"{OPTIMIZER}: {str(err).strip().splitlines()[-1][:120]}") from None
    # the state file vouches for the files beside it: a flipped bit or a deleted tensor is refused on load
    digests = {name: sha256_of(tmp / name) for name in (WEIGHTS, OPTIMIZER) if (tmp / name).exists()}
    (tmp / STATE).write_text(json.dumps({**state, "sha256": digests}, indent=1))
    _sync(tmp)


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _sync(folder: Path) -> None:
    """fsync the files of `folder` and the folder itself, so a rename never points at unwritten data."""
    for path in [*folder.iterdir(), folder] if folder.is_dir() else []:
        if path.is_dir() and path != folder:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _retire(old: Path, keep_last: int, new_step: int) -> None:
    """The replaced checkpoint: removed, or kept as `step-N` (rotating out the oldest). One of the
    same step as its replacement (the run's final save after its final evaluation) is a duplicate."""
    step = json.loads((old / STATE).read_text())["step"] if (old / STATE).exists() else new_step
    if keep_last <= 1 or step == new_step:
        shutil.rmtree(old)
        return
    kept = old.parent / f"step-{step}"
    shutil.rmtree(kept, ignore_errors=True)
    old.rename(kept)
    for stale in rotated(old.parent)[: -(keep_last - 1)]:
        shutil.rmtree(stale)


def rotated(root: Path) -> list[Path]:
    """The kept older checkpoints under `root`, oldest first."""
    found = [p for p in Path(root).glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _recover(directory: Path) -> Path:
    """If a kill fell between the two renames, the previous checkpoint sits at `.old`."""
    old = _sibling(directory, ".old")
    if not directory.exists() and old.exists():
        old.rename(directory)
    return directory


def load_weights(model, directory: Path) -> dict:
    """Copy saved trainable tensors into the model; returns the loop state saved beside them."""
    directory = _recover(Path(directory))
    if not (directory / WEIGHTS).exists():
        raise PeftlabError(f"{directory}: no checkpoint here ({WEIGHTS} missing)")
    if directory.is_symlink():
        raise PeftlabError(f"{directory}: a symbolic link, not a checkpoint folder peftlab wrote: refused")
    state = load_state(directory)
    weights = regular_file(directory / WEIGHTS, directory)
    verify_digest(weights, _digests(directory).get(WEIGHTS), "the checkpoint's weights")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftlabError(f"{directory / WEIGHTS}: not a readable safetensors file ({err})") from None
    check_finite(tensors, weights)
    _check_state_digest(weights, state)
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params or params[name].shape != tensor.shape:
            raise PeftlabError(f"{directory / WEIGHTS}: tensor '{name}' does not fit this model")
        with torch.no_grad():
            params[name].copy_(tensor.to(params[name].dtype))
    return state


def _check_state_digest(weights: Path, state: dict) -> None:
    with safe_open(str(weights), framework="pt") as handle:
        recorded = (handle.metadata() or {}).get(STATE_DIGEST)
    if recorded is not None and recorded != content_digest(state):
        raise PeftlabError(f"{weights.parent / STATE}: edited after the checkpoint was written (its digest in "
                           f"{weights.name} differs): refused")


def load_training_state(directory: Path, optimizer, scheduler) -> dict:
    """Restore the optimizer, scheduler and RNGs; returns the extra state saved with them (or {})."""
    path = Path(directory) / OPTIMIZER
    verify_digest(regular_file(path, directory), _digests(directory).get(OPTIMIZER), "the optimizer state")
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as err:    # truncated or tampered: name the file, whatever torch's reason
        raise PeftlabError(f"{path}: cannot load the optimizer state ({type(err).__name__}: {err})") from None
    try:
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:   # another run's state, or damaged
        raise PeftlabError(f"{path}: does not fit this run's optimizer ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    extra = blob.get("extra", {})
    return extra if isinstance(extra, dict) else {}


def rng_state() -> dict:
    """Every RNG as tensors, lists and ints: what `torch.load(weights_only=True)` accepts."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(words), gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                      float(cached)]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))


def has_checkpoint(run_dir: Path) -> bool:
    return (_recover(Path(run_dir) / "checkpoints" / "last") / STATE).exists()


def load_state(directory: Path) -> dict:
    """The loop's counters saved with a checkpoint (without the file digests recorded beside them)."""
    return {k: v for k, v in _read_state(directory).items() if k != "sha256"}


def _digests(directory: Path) -> dict:
    digests = _read_state(directory).get("sha256") or {}
    return digests if isinstance(digests, dict) else {}


def _read_state(directory: Path) -> dict:
    path = _recover(Path(directory)) / STATE
    try:
        state = json.loads(regular_file(path, directory).read_text())
    except (OSError, ValueError) as err:
        raise PeftlabError(f"{path}: cannot read the trainer state ({err})") from None
    if not isinstance(state, dict):
        raise PeftlabError(f"{path}: not a trainer state (expected a JSON object)")
    return state


def fault_point(phase: str, step: int) -> None:
    """Test hook: `PEFTLAB_KILL_AT=PHASE:N` (phase step, eval or ckpt) SIGKILLs the process in that
    phase at step N, so resume tests exercise real crashes rather than polite exits. The older
    `PEFTLAB_KILL_AT_STEP=N` means "after step N"."""
    wanted = os.environ.get(FAULT_ENV)
    legacy = os.environ.get("PEFTLAB_KILL_AT_STEP")
    if (wanted and wanted == f"{phase}:{step}") or (legacy and phase == "after" and int(legacy) == step):
        os.kill(os.getpid(), signal.SIGKILL)
