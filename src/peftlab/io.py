"""Save and load adapters: safetensors for tensors, JSON for the config and the base's fingerprint.

A saved adapter is a directory with `peftlab_config.json` and `peftlab_weights.safetensors`. Only the
adapter's tensors (and base tensors it trains in place) are written; never a pickle. Each file is
written to a temporary name and renamed, so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import core
from .average import average
from .blocks import Average
from .core import adapter_state, detach, pick, require
from .errors import PeftlabError
from .files import (CONFIG_FILE, WEIGHTS_FILE, atomic_write_pair, check_finite, content_digest, read_json,
                    read_safetensors, regular_file, sha256_of, verify_digest, write_error)
from .heads import fit_heads
from .registry import config_from_dict, spec_for
from .released import is_model_p, nlprunners_source
from .runtime import named_base_parameters
from .state import controller_of

FORMAT_VERSION = 1
CONFIG_DIGEST = "peftlab_config_sha256"
RUN_ADAPTER = Path("adapter") / "default"   # where a peftlab run folder keeps its adapter


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


def attach(model: nn.Module, config, name: str | None = None, *, activate: bool = True,
           trainable: bool = True) -> nn.Module:
    """`pl.attach`: attach a method config, or a composition block that creates an adapter — a Fuse or
    WeightedSum (the adapter holding its mixing weights), an Average (the averaged adapter). Saved members
    a mixing config names in `sources` are loaded first, frozen, when absent, and leave with it. On any
    error the model is left exactly as it was."""
    if isinstance(config, Average):
        average(model, config.members, config.weights, name or config.name)
        if activate:
            core.activate(model, name or config.name)
        return model
    if hasattr(config, "mixer_config"):
        name = name or config.name
        config = config_from_dict(config.mixer_config())
    spec_for(config)        # a method config, before anything reads it: else one line, model unchanged
    loaded = _load_sources(model, config.member_sources())
    try:
        core.attach(model, config, name, activate=activate, trainable=trainable)
    except BaseException:
        for member in reversed(loaded):
            detach(model, member)
        raise
    if loaded:   # members loaded for this adapter go when it goes (after its own parts are removed)
        attachment = controller_of(model).adapters[name or "default"]
        attachment.journal.record_last(lambda: _detach_if_attached(model, loaded))
    return model


def _load_sources(model: nn.Module, sources: dict) -> list[str]:
    """Load each saved member not attached yet (frozen, inactive); on a failure, unload what was loaded."""
    loaded: list[str] = []
    try:
        for member, directory in sources.items():
            controller = controller_of(model)
            if controller is None or member not in controller.adapters:
                load(model, directory, member, trainable=False, activate=False)
                loaded.append(member)
    except BaseException:
        _detach_if_attached(model, loaded)
        raise
    return loaded


def _detach_if_attached(model: nn.Module, names) -> None:
    for member in reversed(list(names)):
        controller = controller_of(model)
        if controller is not None and member in controller.adapters:
            detach(model, member)


def save(model: nn.Module, directory, name: str | None = None) -> Path:
    """Write one adapter (default: the only one attached) to `directory`."""
    controller = require(model)
    name = pick(controller, name)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise PeftlabError(f"{directory}: exists and is not a folder; save the adapter into a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:     # a parent that is a file, no permission, a full disk
        raise PeftlabError(f"{directory}: cannot create the folder ({write_error(err)})") from None
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in adapter_state(model, name).items()}
    config = controller.adapters[name].config.to_dict()
    meta = {
        "format": "peftlab-adapter", "format_version": FORMAT_VERSION, "name": name,
        "config": config, "fingerprint": fingerprint(model),
    }
    # each file vouches for the other: the weights carry the config's digest, the config the weights'
    written = {"format": "pt", CONFIG_DIGEST: content_digest(config)}

    def write_config(weights_tmp: Path):
        meta["sha256"] = {WEIGHTS_FILE: sha256_of(weights_tmp)}
        return lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2))
    # both files are written in full before either replaces its old one: a full disk leaves the
    # previous adapter whole, never new weights beside an old config
    atomic_write_pair(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata=written),
                      directory / CONFIG_FILE, write_config)
    return directory


def load(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
         activate: bool = True, strict: bool = True) -> nn.Module:
    """Attach an adapter from a directory saved by `save` (or by HF PEFT, for LoRA and IA3).

    Refuses a different base model with a message naming the first difference; `strict=False` allows
    a base whose other parameters differ, as long as the adapter's own tensors fit.
    """
    directory = Path(directory)
    if directory.name == "model.p" and not directory.exists() and (directory.parent / RUN_ADAPTER).is_dir():
        # nlprunners' adapter_weights.json names runscript.py's model.p; where peftlab ran the translated
        # runscript.py, that folder is a peftlab run holding the same adapter (docs/seed_configs.md)
        directory = directory.parent / RUN_ADAPTER
    if is_model_p(directory):    # nlprunners' released model.p: a Houlsby adapter, its norms and head
        config, tensors = nlprunners_source(directory)
        return _attach_loaded(model, config_from_dict(config), tensors, name or "default", directory,
                              trainable=trainable, activate=activate)
    if not (directory / CONFIG_FILE).exists() and (directory / "adapter_config.json").exists():
        raise PeftlabError(f"{directory}: an HF PEFT adapter directory; load it with pl.load (peftlab's "
                           f"top-level load reads both formats)")
    meta = read_json(regular_file(directory / CONFIG_FILE, directory))
    if meta.get("format") != "peftlab-adapter" or "config" not in meta:
        raise PeftlabError(f"{directory / CONFIG_FILE}: not a peftlab adapter config")
    weights = regular_file(directory / WEIGHTS_FILE, directory)
    verify_digest(weights, (meta.get("sha256") or {}).get(WEIGHTS_FILE), "the weights file")
    _check_config_digest(weights, meta["config"])
    config = config_from_dict(meta["config"], strict=False)
    difference = fingerprint_difference(meta.get("fingerprint", {}), fingerprint(model))
    if difference and strict:
        raise PeftlabError(f"{directory}: adapter does not fit this base model: {difference}")
    if difference:
        warnings.warn(f"loading {directory} with strict=False although {difference}")
    tensors = read_safetensors(weights)
    check_finite(tensors, weights)
    name = name or meta.get("name") or "default"
    undo = None if strict else fit_heads(model, tensors, directory)
    return _attach_loaded(model, config, tensors, name, directory / WEIGHTS_FILE, trainable=trainable,
                          activate=activate, undo=undo)


def _attach_loaded(model, config, tensors: dict, name: str, source, *, trainable: bool, activate: bool,
                   undo=None):
    """Attach and fill; `undo` (a head resized for this adapter) runs when it is detached, or now on failure."""
    try:
        attach(model, config, name, activate=activate, trainable=trainable)
    except BaseException:
        if undo is not None:
            undo()
        raise
    if undo is not None:
        controller_of(model).adapters[name].journal.record_last(undo)
    try:
        copy_into(adapter_state(model, name), tensors, source)
    except BaseException:
        detach(model, name)
        raise
    controller_of(model).adapters[name].loaded_base = {k[len("base."):]: v for k, v in tensors.items()
                                                      if k.startswith("base.")}
    return model


def _check_config_digest(weights: Path, config: dict) -> None:
    """The config the weights were saved with (recorded in their metadata since format 1 with digests)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(CONFIG_DIGEST)
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftlabError(f"{weights}: unreadable or truncated safetensors file ({err})") from None
    if recorded is not None and recorded != content_digest(config):
        raise PeftlabError(f"{weights.parent / CONFIG_FILE}: the config was edited after the weights were "
                           f"saved (its digest differs from the one in {weights.name}): refused")


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
        if tensor.is_floating_point() and not tensors[key].is_floating_point():
            raise PeftlabError(f"{source}: tensor '{key}' has dtype {tensors[key].dtype}, expected a "
                               f"floating-point type")
    for key, tensor in state.items():
        tensor.copy_(tensors[key].to(tensor.dtype))
