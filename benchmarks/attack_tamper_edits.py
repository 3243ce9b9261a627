"""The tamperings themselves: each edit of a saved adapter folder or of a run folder, and whether the
result is invalid (must be refused) or valid (a harmless edit: must load or resume as if untouched).

`*_nodigest` edits also delete the SHA-256 recorded beside the file, as a hand-made file would lack it,
so that the content checks (not the digest) are what must catch them."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

W, C = "peftlab_weights.safetensors", "peftlab_config.json"
LAST = Path("checkpoints") / "last"
ADAPTER_EDITS = {
    "weights:flip_data": "invalid", "weights:flip_header": "invalid", "weights:truncate_half": "invalid",
    "weights:truncate_tail": "invalid", "weights:empty": "invalid", "weights:delete_tensor": "invalid",
    "weights:delete_tensor_nodigest": "invalid", "weights:nan": "invalid", "weights:nan_nodigest": "invalid",
    "weights:inf_nodigest": "invalid", "weights:int64_nodigest": "invalid", "weights:float16": "invalid",
    "weights:extra_tensor": "invalid", "weights:extra_tensor_nodigest": "invalid",
    "weights:shape_nodigest": "invalid", "weights:swap_same_shape": "invalid",
    "weights:symlink_other": "invalid", "weights:fifo": "invalid", "weights:missing": "invalid",
    "weights:is_dir": "invalid", "config:edit_field": "invalid", "config:not_json": "invalid",
    "config:fifo": "invalid", "config:format": "invalid", "config:symlink_other": "invalid",
    "config:digest_removed": "valid",
}
RUN_EDITS = {
    "ckpt_weights:flip_data": "invalid", "ckpt_weights:truncate": "invalid", "ckpt_weights:delete_tensor": "invalid",
    "ckpt_weights:nan": "invalid", "ckpt_weights:int64": "invalid", "ckpt_weights:swap_other_run": "invalid",
    "ckpt_weights:symlink_other_run": "invalid", "ckpt_weights:fifo": "invalid",
    "ckpt_weights:extra_tensor": "invalid", "ckpt_weights:float16": "invalid",
    "ckpt_optimizer:flip_data": "invalid", "ckpt_optimizer:truncate": "invalid",
    "ckpt_optimizer:swap_other_run": "invalid", "ckpt_optimizer:fifo": "invalid", "ckpt_optimizer:missing": "invalid",
    "ckpt_state:forged_step": "invalid", "ckpt_state:missing_epoch": "invalid", "ckpt_state:not_json": "invalid",
    "ckpt_state:fifo": "invalid", "ckpt_state:array": "invalid", "ckpt_state:symlink_other_run": "invalid",
    "ckpt_state:digests_removed": "valid", "ckpt_folder:symlink_other_run": "invalid",
    "ckpt_folder:old_only": "valid", "ckpt_folder:stale_tmp": "valid",
    "log:torn_last_line": "valid", "log:garbage_line": "valid", "log:missing": "valid", "log:fifo": "invalid",
    "log:symlink_other_run": "invalid", "run_config:edited": "invalid", "run_config:missing": "invalid",
    "run_config:fifo": "invalid",
}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _resave(path: Path, change) -> None:
    """Rewrite a safetensors file with `change(tensors)` applied, keeping its metadata (digests)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _first(tensors: dict) -> str:
    return sorted(tensors)[0]


CHANGES = {
    "delete_tensor": lambda t: t.pop(_first(t)),
    "nan": lambda t: t[_first(t)].fill_(float("nan")),
    "inf": lambda t: t[_first(t)].fill_(float("inf")),
    "int64": lambda t: t.update({_first(t): t[_first(t)].long()}),
    "float16": lambda t: t.update({_first(t): t[_first(t)].half()}),
    "extra_tensor": lambda t: t.update({"parts.extra.weight": torch.ones(2, 2)}),
    "shape": lambda t: t.update({_first(t): torch.zeros(3, 3)}),
}


def _replace(path: Path, kind: str, other: Path | None = None) -> None:
    """The file-level edits shared by adapters and checkpoints."""
    if kind in ("fifo", "missing", "is_dir", "symlink_other", "symlink_other_run", "empty"):
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "is_dir":
        path.mkdir()
    elif kind in ("symlink_other", "symlink_other_run"):
        path.symlink_to(other)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("swap_same_shape", "swap_other_run"):
        shutil.copyfile(other, path)
    elif kind in ("truncate_half", "truncate"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncate_tail":
        path.write_bytes(path.read_bytes()[:-40])
    elif kind == "flip_data":
        flip(path, path.stat().st_size - 3)
    elif kind == "flip_header":
        flip(path, 12)
    elif kind == "not_json":
        path.write_text("{not json")
    elif kind != "missing":
        raise KeyError(kind)


def edit_adapter(edit: str, folder: Path, other: Path) -> None:
    part, kind = edit.split(":")
    path = folder / (W if part == "weights" else C)
    nodigest = kind.endswith("_nodigest")
    kind = kind.removesuffix("_nodigest")
    if kind in CHANGES:
        _resave(path, CHANGES[kind])
    elif part == "config" and kind in ("edit_field", "format", "digest_removed"):
        meta = json.loads(path.read_text())
        if kind == "edit_field":     # a value of the method's config (the one the attack's adapters share)
            config = meta["config"]
            key = next(k for k in ("r", "reduction_factor", "non_linearity", "unfreeze_layer_norms") if k in config)
            config[key] = {"non_linearity": "relu"}.get(key, not config[key] if isinstance(config[key], bool)
                                                          else config[key] * 2)
        elif kind == "format":
            meta["format"] = "something-else"
        else:
            meta.pop("sha256")
        path.write_text(json.dumps(meta))
    else:
        _replace(path, kind, other / path.name)
    if nodigest:
        meta = json.loads((folder / C).read_text())
        meta.pop("sha256", None)
        (folder / C).write_text(json.dumps(meta))


def edit_run(edit: str, run: Path, other: Path) -> None:
    part, kind = edit.split(":")
    files = {"ckpt_weights": LAST / "trainable.safetensors", "ckpt_optimizer": LAST / "optimizer.pt",
             "ckpt_state": LAST / "trainer_state.json", "log": Path("log.jsonl"), "run_config": Path("config.json")}
    if part == "ckpt_folder":
        _edit_folder(kind, run, other)
        return
    path = run / files[part]
    if kind in CHANGES:
        _resave(path, CHANGES[kind])
    elif part == "ckpt_state" and kind != "symlink_other_run" and kind not in ("fifo", "not_json"):
        _edit_state(kind, path)
    elif part == "log" and kind in ("torn_last_line", "garbage_line"):
        lines = path.read_text().splitlines(keepends=True)
        if kind == "torn_last_line":
            path.write_text("".join(lines) + '{"kind": "train", "step":')
        else:
            path.write_text("".join(lines[:1] + ["\x00garbage}{\n"] + lines[1:]))
    elif part == "run_config" and kind == "edited":
        config = json.loads(path.read_text())
        config["train"]["learning_rate"] = 0.5
        path.write_text(json.dumps(config, indent=2))
    else:
        _replace(path, kind, other / files[part])


def _edit_state(kind: str, path: Path) -> None:
    state = json.loads(path.read_text())
    if kind == "forged_step":
        state["step"] = 1_000_000_000
    elif kind == "missing_epoch":
        state.pop("epoch")
    elif kind == "array":
        state = [state]
    elif kind == "digests_removed":
        state.pop("sha256")
    path.write_text(json.dumps(state))


def _edit_folder(kind: str, run: Path, other: Path) -> None:
    last = run / LAST
    if kind == "symlink_other_run":
        shutil.rmtree(last)
        last.symlink_to(other / LAST)
    elif kind == "old_only":          # a kill between the two renames of a checkpoint write
        last.rename(last.with_name("last.old"))
    elif kind == "stale_tmp":         # a kill in the middle of a checkpoint write
        tmp = last.with_name("last.tmp")
        shutil.copytree(last, tmp)
        (tmp / "trainable.safetensors").write_bytes(b"half a file")
