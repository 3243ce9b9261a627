"""AdapterHub's AdapterFusion directories: read by `pl.load`, written by `pl.export_adapterhub`.

    pl.load(model, "dir/a")                  # the fused adapters first (adapter_config.json directories)
    pl.load(model, "dir/b")
    pl.load(model, "dir/a,b")                # adapter_fusion_config.json + pytorch_model_adapter_fusion.bin
    pl.export_adapterhub(model, "fuse_a_b", "out/a,b")   # AdapterHub's load_adapter_fusion reads it

A directory holds `adapter_fusion_config.json` (AdapterHub's `AdapterFusionConfig` under "config", the fused
adapters under "adapter_names") and `pytorch_model_adapter_fusion.bin` — read with
`torch.load(weights_only=True)`, tensors only — or `model_adapter_fusion.safetensors` (adapters 1.3
loading.py:657-830). The fusion's tensors are named `<layer>.<sublayer>.adapter_fusion_layer.<name>.{query,
key,value}.*` beside the fused adapters' own (methods/bottleneck.py:120-132).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .adapterhub_format import VERSION, bottleneck_home, normalize, stack_patterns
from .core import adapter_state, attach, detach, require
from .errors import PeftlabError
from .files import atomic_write, check_finite, read_json, read_safetensors, read_torch_tensors, regular_file
from .io import copy_into
from .layouts import layout_for
from .methods.bottleneck_adapterhub import SerialAdapterHub
from .methods.fusion import FusionConfig
from .methods.fusion_adapterhub import AdapterHubFusionPart
from .state import controller_of
from .targeting import find_stacks, stack_position

FUSION_CONFIG = "adapter_fusion_config.json"
FUSION_WEIGHTS, SAFE_FUSION_WEIGHTS = "pytorch_model_adapter_fusion.bin", "model_adapter_fusion.safetensors"
# AdapterFusionConfig's keys (configuration/adapter_fusion_config.py:9-21) -> FusionConfig fields
FUSION_FIELDS = {"key": "key", "query": "query", "value": "value", "query_before_ln": "query_before_ln",
                 "regularization": "regularization", "residual_before": "residual_before",
                 "value_before_softmax": "value_before_softmax", "value_initialized": "value_initialized",
                 "dropout_prob": "dropout"}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")   # peftlab's adapter names (core.attach)


def is_fusion_directory(directory: Path) -> bool:
    return (Path(directory) / FUSION_CONFIG).is_file()


# --- reading ---------------------------------------------------------------------------------------------

def import_adapterhub_fusion(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
                             activate: bool = True, strict: bool = True) -> nn.Module:
    """Attach the AdapterFusion saved in `directory` over adapters already attached under the names it fuses;
    on any error the model is left as it was."""
    directory = Path(directory)
    source = directory / FUSION_CONFIG
    meta = read_json(regular_file(source, directory))
    _check_base(meta, model, source, strict)
    saved_name = meta.get("name")
    if not isinstance(saved_name, str) or not saved_name:
        raise PeftlabError(f"{source}: no fusion 'name' (AdapterHub's tensor names contain it)")
    members = meta.get("adapter_names", saved_name.split(","))   # loading.py:803-804
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise PeftlabError(f"{source}: adapter_names must be a list of adapter names, got {members!r}")
    controller = controller_of(model)
    attached = controller.adapters if controller is not None else {}
    missing = [m for m in members if m not in attached]
    if missing:
        raise PeftlabError(f"{source}: fuses {members}, but '{missing[0]}' is not attached; load the fused "
                           f"adapters first (pl.load(model, <their directories>))")
    config = config_from_adapterhub_fusion(meta.get("config"), members, source)
    raw, weights = _read_weights(directory)
    name = name or (saved_name if NAME.match(saved_name) else "_".join(("fuse", *members)))
    attach(model, config, name, activate=activate, trainable=trainable)
    try:
        state = adapter_state(model, name)
        patterns = stack_patterns(layout_for(model), find_stacks(model, layout_for(model)))
        saved = {normalize(k, patterns, None): v for k, v in raw.items()}
        expected = fusion_tensor_names(model, name, saved_name)
        unexpected = [k for k in saved if k not in expected]
        if unexpected:
            raise PeftlabError(f"{weights}: tensor '{unexpected[0]}' is unexpected for this fusion on this model")
        absent = [k for k in expected if k not in saved]
        if absent:
            raise PeftlabError(f"{weights}: tensor '{absent[0]}' is missing")
        tensors = {expected[k]: v for k, v in saved.items()}
        for key, tensor in state.items():
            if key.startswith("base."):    # a task head the fusion trains: AdapterHub saves heads apart
                tensors[key] = tensor.detach().clone()
        copy_into(state, tensors, weights)
    except BaseException:
        detach(model, name)
        raise
    return model


def config_from_adapterhub_fusion(config, members: list[str], where) -> FusionConfig:
    """The FusionConfig computing what AdapterHub's fusion config computes; one line naming a key it cannot."""
    if not isinstance(config, dict):
        raise PeftlabError(f"{where}: config {config!r} names an AdapterHub preset instead of saving it; only "
                           f"saved configs (a mapping of keys) are read")
    fields = {"compat": "adapterhub", "adapters": members}
    for key, value in config.items():
        if key in FUSION_FIELDS:
            fields[FUSION_FIELDS[key]] = value
        elif key == "temperature":
            if value:   # modeling.py:416-421, 439-440: T starts at 50 and drops by 0.05 in every forward
                raise PeftlabError(f"{where}: config.temperature=true anneals the softmax temperature inside each "
                                   f"forward call in AdapterHub; that state is not reproduced")
        else:
            raise PeftlabError(f"{where}: config key '{key}' is not an AdapterHub fusion option peftlab reads")
    if not fields.get("dropout"):   # `dropout_prob or the model's attention dropout` (bottleneck.py:125)
        fields["dropout"] = None
    try:
        return FusionConfig(**fields)
    except PeftlabError as err:
        raise PeftlabError(f"{where}: {err}") from None


def _check_base(meta: dict, model: nn.Module, source: Path, strict: bool) -> None:
    for key in ("model_type", "hidden_size"):
        saved, here = meta.get(key), getattr(model.config, key, None)
        if saved is not None and saved != here:
            message = f"{source}: saved for {key} {saved!r}, this model has {here!r}"
            if strict:
                raise PeftlabError(message)
            warnings.warn(message + " (strict=False)")


def _read_weights(directory: Path) -> tuple[dict, Path]:
    """model_adapter_fusion.safetensors, else pytorch_model_adapter_fusion.bin (weights_only: tensors only)."""
    if (directory / SAFE_FUSION_WEIGHTS).exists():
        path = regular_file(directory / SAFE_FUSION_WEIGHTS, directory)
        loaded = read_safetensors(path)
    elif (directory / FUSION_WEIGHTS).exists():
        path = regular_file(directory / FUSION_WEIGHTS, directory)
        loaded = read_torch_tensors(path)
    else:
        raise PeftlabError(f"{directory}: no {FUSION_WEIGHTS} or {SAFE_FUSION_WEIGHTS} (AdapterHub's fusion weights)")
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in loaded.items()):
        raise PeftlabError(f"{path}: not a mapping of tensor names to tensors")
    check_finite(loaded, path)
    return loaded, path


# --- names -----------------------------------------------------------------------------------------------

def fusion_tensor_names(model: nn.Module, name: str, saved_name: str | None = None) -> dict[str, str]:
    """AdapterHub's name of each tensor of fusion `name` (called `saved_name` there; default the names it fuses
    joined by commas, AdapterHub's default) -> its key in `adapter_state`."""
    controller = require(model)
    attachment = controller.adapters[name]
    saved_name = saved_name or ",".join(attachment.config.adapters)
    key_of = {id(t): k for k, t in adapter_state(model, name).items()}
    layout = layout_for(model)
    stacks = find_stacks(model, layout)
    out = {}
    for path, part in attachment.parts:
        if not isinstance(part, AdapterHubFusionPart):
            raise PeftlabError(f"'{name}' is not AdapterHub's fusion (FusionConfig(compat='adapterhub'))")
        stack, layer = stack_position(model, layout, path)
        home = bottleneck_home(layout.name, _location(controller, attachment.config.adapters, path), stack)
        prefix = f"{stacks[stack][0]}.{layer}.{home}.adapter_fusion_layer.{saved_name}."
        for leaf, tensor in part.named_parameters():
            out[prefix + leaf] = key_of[id(tensor)]
    return out


def _location(controller, members, path: str) -> str:
    """Where a fused adapter sits at `path` ("attn" or "ffn"): AdapterHub keeps the fusion beside it."""
    for member in members:
        for where, part in controller.adapters[member].parts:
            if where == path and isinstance(part, SerialAdapterHub):
                return part.location
    raise PeftlabError(f"no fused adapter sits at {path}")


# --- writing ---------------------------------------------------------------------------------------------

def export_adapterhub_fusion(model: nn.Module, name: str, directory) -> Path:
    """Write fusion `name` as AdapterHub's `save_adapter_fusion` does (the fused adapters are exported one by
    one with `pl.export_adapterhub`); AdapterHub's `load_adapter_fusion` reads it."""
    config = require(model).adapters[name].config
    if not isinstance(config, FusionConfig) or config.compat != "adapterhub":
        raise PeftlabError(f"export_adapterhub: '{name}' is peftlab's own fusion; AdapterHub's is "
                           f"pl.Fuse(..., compat='adapterhub') (its value map has no bias and skips the residual)")
    model_dropout = float(getattr(model.config, "attention_probs_dropout_prob", 0.0) or 0.0)
    if config.temperature != 1.0 or (config.dropout == 0.0 and model_dropout > 0):
        key = "temperature" if config.temperature != 1.0 else "dropout"
        raise PeftlabError(f"export_adapterhub: fusion {key}={getattr(config, key)!r} has no AdapterHub equivalent "
                           f"(AdapterHub: T = 1, and a dropout of 0 means the model's {model_dropout})")
    members = list(config.adapters)
    saved_name = ",".join(members) if name == "_".join(("fuse", *members)) else name
    state = adapter_state(model, name)
    tensors = {ah: state[key].detach().to("cpu").contiguous().clone()
               for ah, key in fusion_tensor_names(model, name, saved_name).items()}
    fields = {ah: getattr(config, field) for ah, field in FUSION_FIELDS.items()}
    meta = {"adapter_names": members, "config": {**fields, "temperature": False},
            "hidden_size": model.config.hidden_size, "model_class": type(model).__name__,
            "model_name": getattr(model.config, "_name_or_path", "") or "", "model_type": model.config.model_type,
            "name": saved_name, "version": VERSION}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / FUSION_WEIGHTS, lambda tmp: torch.save(tensors, tmp))
    atomic_write(directory / SAFE_FUSION_WEIGHTS, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(directory / FUSION_CONFIG, lambda tmp: Path(tmp).write_text(text))
    return directory


def fusion_regularization_loss(model: nn.Module) -> torch.Tensor | None:
    """AdapterHub's `get_fusion_regularization_loss` (model_mixin.py:1455-1470): Σ 0.01 · ||I - V||² over the
    AdapterHub fusions' value maps that train (whatever their `regularization` says, as there); None when there
    are none. AdapterHub's trainer backpropagates it after each optimizer step (trainer.py:261-266); peftlab's
    runner does not add it: add it to the loss."""
    total = None
    for attachment in require(model).adapters.values():
        for _, part in attachment.parts:
            term = part.regularization() if isinstance(part, AdapterHubFusionPart) else None
            if term is not None:
                total = term if total is None else total + term
    return total
