"""Save and load adapters: safetensors for tensors, JSON for the config and the base's fingerprint.

A saved adapter is a directory with `peftlab_config.json` and `peftlab_weights.safetensors`. Only the
adapter's tensors (and base tensors it trains in place) are written; never a pickle. Each file is
written to a temporary name and renamed, so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .core import _pick, _require, attach, detach
from .errors import PeftlabError
from .registry import config_from_dict
from .state import controller_of, home_of
from .surgery import named_base_parameters

CONFIG_FILE, WEIGHTS_FILE = "peftlab_config.json", "peftlab_weights.safetensors"
FORMAT_VERSION = 1


def adapter_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Stable key -> tensor for everything an adapter owns; a shared tensor appears once."""
    attachment = _require(model).adapters[name]
    out, seen = {}, set()

    def put(key, tensor):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[key] = tensor

    home = home_of(model)
    if home is not None and name in home:
        for key, tensor in home[name].state_dict(keep_vars=True).items():
            put(f"home.{key}", tensor)
    counters: dict[str, int] = {}
    for path, part in attachment.parts:
        index = counters[path] = counters.get(path, -1) + 1
        for key, tensor in part.state_dict(keep_vars=True).items():
            put(f"parts.{path}.{index}.{key}", tensor)
    claimed = set(attachment.claimed)
    for param_name, param in named_base_parameters(model):
        if param_name in claimed:
            put(f"base.{param_name}", param)
    return out


def fingerprint(model: nn.Module) -> dict:
    return {
        "model_type": getattr(model.config, "model_type", None),
        "class": type(model).__name__,
        "parameters": {n: list(p.shape) for n, p in named_base_parameters(model)},
    }


def fingerprint_difference(saved: dict, here: dict) -> str | None:
    """The first way the saved base differs from this one, in words; None when they agree."""
    if saved.get("model_type") != here["model_type"]:
        return f"saved on a '{saved.get('model_type')}' model, this one is '{here['model_type']}'"
    theirs, ours = saved.get("parameters", {}), here["parameters"]
    for name, shape in theirs.items():
        if name not in ours:
            return f"base parameter '{name}' of the saved base is missing here"
        if list(ours[name]) != list(shape):
            return f"base parameter '{name}' has shape {list(ours[name])} here but {list(shape)} in the saved base"
    extra = next((n for n in ours if n not in theirs), None)
    return f"this model has base parameter '{extra}' that the saved base lacked" if extra else None


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(model: nn.Module, directory, name: str | None = None) -> Path:
    """Write one adapter (default: the only one attached) to `directory`."""
    controller = _require(model)
    name = _pick(controller, name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in adapter_state(model, name).items()}
    meta = {
        "format": "peftlab-adapter", "format_version": FORMAT_VERSION, "name": name,
        "config": controller.adapters[name].config.to_dict(), "fingerprint": fingerprint(model),
    }
    _atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return directory


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftlabError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PeftlabError(f"{path}: not valid JSON ({err})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise PeftlabError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftlabError(f"{path}: unreadable or truncated safetensors file ({err})") from None


def load(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
         activate: bool = True, strict: bool = True) -> nn.Module:
    """Attach an adapter from a directory saved by `save` (or by HF PEFT, for LoRA and IA3).

    Refuses a different base model with a message naming the first difference; `strict=False` allows
    a base whose other parameters differ, as long as the adapter's own tensors fit.
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).exists() and (directory / "adapter_config.json").exists():
        from .peft_interop import import_peft
        return import_peft(model, directory, name, trainable=trainable, activate=activate)
    meta = read_json(directory / CONFIG_FILE)
    if meta.get("format") != "peftlab-adapter" or "config" not in meta:
        raise PeftlabError(f"{directory / CONFIG_FILE}: not a peftlab adapter config")
    config = config_from_dict(meta["config"], strict=False)
    difference = fingerprint_difference(meta.get("fingerprint", {}), fingerprint(model))
    if difference and strict:
        raise PeftlabError(f"{directory}: adapter does not fit this base model: {difference}")
    if difference:
        warnings.warn(f"loading {directory} with strict=False although {difference}")
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    name = name or meta.get("name") or "default"
    attach(model, config, name, activate=activate, trainable=trainable)
    try:
        copy_into(adapter_state(model, name), tensors, directory / WEIGHTS_FILE)
    except BaseException:
        detach(model, name)
        raise
    return model


@torch.no_grad()
def copy_into(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source) -> None:
    """Copy `tensors` into `state` after checking every key and shape; nothing is written on a mismatch."""
    missing = [k for k in state if k not in tensors]
    unexpected = [k for k in tensors if k not in state]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise PeftlabError(f"{source}: tensor '{key}' is {'missing' if missing else 'unexpected'}")
    for key, tensor in state.items():
        if tuple(tensors[key].shape) != tuple(tensor.shape):
            raise PeftlabError(f"{source}: tensor '{key}' has shape {list(tensors[key].shape)}, "
                               f"expected {list(tensor.shape)}")
    for key, tensor in state.items():
        tensor.copy_(tensors[key].to(tensor.dtype))
