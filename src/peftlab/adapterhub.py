"""AdapterHub interchange: read the adapter directories AdapterHub `adapters` (1.x) saves, and write ones
its `load_adapter` reads, with the same outputs (tests/test_adapterhub.py checks AdapterHub's own files).

    import peftlab as pl
    pl.load(model, "path/to/adapterhub_adapter")        # adapter_config.json + pytorch_adapter.bin
    pl.export_adapterhub(model, "name", "out/dir")      # back to AdapterHub's format

A directory holds `adapter_config.json` and `pytorch_adapter.bin` (read with `torch.load(weights_only=True)`)
or `adapter.safetensors`; a static task head (`head_config.json` whose config is null, with
`pytorch_model_head.bin` or `model_head.safetensors`) comes along when it belongs to this model's class, as
AdapterHub's loader does. AdapterHub's methods built by hand: `pl.adapterhub.SeqBn`, `DoubleSeqBn`, `ParBn`,
`SeqBnInv`, `DoubleSeqBnInv`, `Compacter`, `CompacterPlusPlus`, `LoRA`, `IA3`, `PromptTuning`, `PrefixTuning`
(docs/adapterhub.md); `tensor_names` is the table between AdapterHub's tensor names and peftlab's.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .adapterhub_format import (PROMPT_HOME, VERSION, bottleneck_home, bottleneck_leaves, config_from_adapterhub,
                                config_to_adapterhub, normalize, stack_patterns)
from .adapterhub_names import (INVERTIBLE, PREFIX_POOL, SHARED, invertible_names, owners, prefix_names,
                               shared_phm_names)
from .core import adapter_state, attach, detach, pick, require
from .errors import PeftlabError
from .files import atomic_write, check_finite, read_json, read_safetensors, read_torch_tensors, regular_file
from .io import copy_into
from .layouts import layout_for
from .methods.bottleneck import Bottleneck, DoubleSeqBn, DoubleSeqBnInv, ParBn, SeqBn, SeqBnInv
from .methods.bottleneck_adapterhub import ParallelAdapterHub, SerialAdapterHub
from .methods.invertible_adapterhub import InvertibleForward
from .methods.lora import LoRAPart
from .methods.lora_adapterhub import AdapterHubIA3 as IA3
from .methods.lora_adapterhub import AdapterHubLoRA as LoRA
from .methods.lora_adapterhub import FusedIA3Part, FusedLoRAPart, ScaledIA3Part
from .methods.phm import AdapterHubCompacter as Compacter
from .methods.phm import AdapterHubCompacterPlusPlus as CompacterPlusPlus
from .methods.phm import Compacter as PeftlabCompacter
from .methods.phm import CompacterPlusPlus as PeftlabCompacterPlusPlus
from .methods.phm import PHMAdapter
from .methods.prefix_adapterhub import AdapterHubPrefixTuning as PrefixTuning
from .methods.prompt_adapterhub import AdapterHubPromptTuning as PromptTuning
from .targeting import find_stacks, stack_position
# AdapterFusion directories and compositions (adapterhub_fusion.py, adapterhub_compose.py)
from .adapterhub_compose import average_adapter, block_from_setup, setup_to_dict
from .adapterhub_fusion import export_adapterhub_fusion, fusion_regularization_loss, fusion_tensor_names
from .methods.fusion import FusionConfig

__all__ = ["SeqBn", "DoubleSeqBn", "ParBn", "SeqBnInv", "DoubleSeqBnInv", "Compacter", "CompacterPlusPlus", "LoRA",
           "IA3", "PromptTuning", "PrefixTuning", "export_adapterhub", "import_adapterhub", "tensor_names"]

__all__ += ["average_adapter", "block_from_setup", "setup_to_dict", "fusion_regularization_loss",
            "fusion_tensor_names"]

CONFIG = "adapter_config.json"
# a model that is its own base model (T5ForConditionalGeneration): AdapterHub's saver and loader look for
# '.shared_parameters.' with a leading dot (loading.py:392)
T5_SHARED = " (AdapterHub keeps a Compacter's shared tensors only under a base model, which T5 lacks)"
WEIGHTS, SAFE_WEIGHTS = "pytorch_adapter.bin", "adapter.safetensors"
HEAD_CONFIG, HEAD_WEIGHTS, SAFE_HEAD_WEIGHTS = "head_config.json", "pytorch_model_head.bin", "model_head.safetensors"


# --- reading ---------------------------------------------------------------------------------------------

def import_adapterhub(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
                      activate: bool = True, strict: bool = True) -> nn.Module:
    """Attach the adapter AdapterHub saved in `directory` (its name there, unless `name` is given). On any
    error the model is left as it was."""
    directory = Path(directory)
    source = directory / CONFIG
    meta = read_json(regular_file(source, directory))
    stacks = find_stacks(model, layout_for(model))
    _check_base(meta, model, source, strict)
    config = config_from_adapterhub(meta, stacks, source)
    saved_name = meta.get("name")
    if not isinstance(saved_name, str) or not saved_name:
        raise PeftlabError(f"{source}: no adapter 'name' (AdapterHub's tensor names contain it)")
    raw, weights = _read_weights(directory)
    head = _read_head(directory, model, strict)
    name = name or saved_name
    attach(model, config, name, activate=activate, trainable=trainable)
    try:
        state = adapter_state(model, name)
        tensors = _from_adapterhub(model, name, raw, saved_name, weights, state)
        for key, tensor in state.items():
            if key.startswith("base."):    # a task head the adapter owns: the saved head, or as it is
                tensors[key] = head.pop(key[len("base."):], tensor.detach().clone())
        if head:
            raise PeftlabError(f"{directory / HEAD_WEIGHTS}: head tensor '{next(iter(head))}' is not a task head "
                               f"of this model that the adapter trains")
        copy_into(state, tensors, weights)
    except BaseException:
        detach(model, name)
        raise
    return model


def _check_base(meta: dict, model: nn.Module, source: Path, strict: bool) -> None:
    here = {"model_type": getattr(model.config, "model_type", None), "hidden_size": _hidden_size(model)}
    for key, value in here.items():
        saved = meta.get(key)
        if saved is not None and saved != value:
            message = f"{source}: saved for {key} {saved!r}, this model has {value!r}"
            if strict:
                raise PeftlabError(message)
            warnings.warn(message + " (strict=False)")


def _hidden_size(model) -> int | None:
    for attr in ("hidden_size", "d_model", "n_embd"):
        if isinstance(getattr(model.config, attr, None), int):
            return getattr(model.config, attr)
    return None


def _read_weights(directory: Path) -> tuple[dict, Path]:
    """AdapterHub's weights: adapter.safetensors, else pytorch_adapter.bin (tensors only, weights_only)."""
    if (directory / SAFE_WEIGHTS).exists():
        path = regular_file(directory / SAFE_WEIGHTS, directory)
        return _tensor_dict(read_safetensors(path), path), path
    if not (directory / WEIGHTS).exists():
        raise PeftlabError(f"{directory}: no {WEIGHTS} or {SAFE_WEIGHTS} (AdapterHub's adapter weights)")
    path = regular_file(directory / WEIGHTS, directory)
    return _tensor_dict(read_torch_tensors(path), path), path


def _tensor_dict(loaded, path: Path) -> dict:
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in loaded.items()):
        raise PeftlabError(f"{path}: not a mapping of tensor names to tensors")
    check_finite(loaded, path)
    return loaded


def _read_head(directory: Path, model: nn.Module, strict: bool) -> dict:
    """Head tensors to load: a static head saved from this model's class, less those equal to what the
    model holds (AdapterHub saves a frozen, tied LM head too)."""
    if not (directory / HEAD_CONFIG).exists():
        return {}
    source = directory / HEAD_CONFIG
    meta = read_json(regular_file(source, directory))
    if meta.get("config") is not None:
        kind = meta["config"].get("head_type", "?") if isinstance(meta["config"], dict) else meta["config"]
        message = (f"{source}: AdapterHub's flexible heads (head_type {kind!r}) are not read yet; "
                   f"pl.load(..., strict=False) loads the adapter without it")
        if strict:
            raise PeftlabError(message)
        warnings.warn(message)
        return {}
    if meta.get("model_class") != type(model).__name__:    # AdapterHub skips it with a warning (loading.py:970-980)
        warnings.warn(f"{source}: a head of {meta.get('model_class')}, not of {type(model).__name__}: not loaded")
        return {}
    safe = directory / SAFE_HEAD_WEIGHTS
    path = regular_file(safe if safe.exists() else directory / HEAD_WEIGHTS, directory)
    tensors = _tensor_dict(read_safetensors(path) if path == safe else read_torch_tensors(path), path)
    here = model.state_dict()     # tied names and buffers too (an LM head, BART's final_logits_bias)
    unknown = [k for k in tensors if k not in here or here[k].shape != tensors[k].shape]
    if unknown:
        raise PeftlabError(f"{path}: head tensor '{unknown[0]}' does not fit this model")
    changed = {k: v for k, v in tensors.items() if not torch.equal(v.to(here[k].dtype), here[k].detach().cpu())}
    heads = layout_for(model).heads
    other = [k for k in changed if k.split(".")[0] not in heads]
    if other:
        raise PeftlabError(f"{path}: '{other[0]}' differs from this model's: a trained LM head or base tensor, "
                           f"which peftlab does not load from AdapterHub (task heads: {', '.join(heads)})")
    return changed


def _key_map(model: nn.Module, name: str, saved_name: str) -> dict[str, tuple[str, torch.Size, bool]]:
    """AdapterHub tensor name (this model's paths) -> (peftlab adapter-state key, AdapterHub's shape,
    optional) for every tensor the adapter owns, less the base tensors it trains (the task head)."""
    state = adapter_state(model, name)
    key_of = {id(t): k for k, t in state.items()}
    layout, attachment = layout_for(model), require(model).adapters[name]
    owner_of = owners(model, layout)
    out = {}

    def put(ah_key, tensor, optional=False, shape=None):
        out[ah_key] = (key_of[id(tensor)], torch.Size(shape or tensor.shape), optional)

    for path, part in attachment.parts:
        if isinstance(part, InvertibleForward):
            for ah_key, key in invertible_names(part, key_of, owner_of[INVERTIBLE], saved_name).items():
                put(ah_key, state[key])
        else:
            _part_names(model, layout, path, part, saved_name, put)
    for ah_key, key in shared_phm_names(state, owner_of[SHARED], saved_name).items():
        put(ah_key, state[key])
    for ah_key, (key, optional) in prefix_names(model, layout, state, owner_of[PREFIX_POOL], saved_name).items():
        put(ah_key, state[key], optional)
    if "home.prompt.embedding" in state:
        owner = _prompt_owner(attachment)
        ah_key = f"{owner}.{PROMPT_HOME}.{saved_name}.prompt_embedding.weight".lstrip(".")
        put(ah_key, state["home.prompt.embedding"])
    missed = [k for k in state if not k.startswith("base.") and k not in {v[0] for v in out.values()}]
    if missed:
        raise PeftlabError(f"adapter '{name}': '{missed[0]}' has no AdapterHub name ({attachment.config.method})")
    return out


def _part_names(model, layout, path: str, part, saved_name: str, put) -> None:
    """The names of one part's tensors: a layer's bottleneck adapter, LoRA or (IA)^3 vector."""
    if isinstance(part, (SerialAdapterHub, ParallelAdapterHub)):
        stack, layer = stack_position(model, layout, path)
        home = bottleneck_home(layout.name, part.location, stack)
        prefix = f"{find_stacks(model, layout)[stack][0]}.{layer}.{home}.adapters.{saved_name}."
        for leaf, tensor, optional in bottleneck_leaves(part.net):
            put(prefix + leaf, tensor, optional)
    elif isinstance(part, (LoRAPart, FusedLoRAPart)):
        a, b = (part.lora_A, part.lora_B) if isinstance(part, FusedLoRAPart) else (part.lora_A.weight,
                                                                                    part.lora_B.weight)
        put(f"{path}.loras.{saved_name}.lora_A", a)
        put(f"{path}.loras.{saved_name}.lora_B", b)
    elif isinstance(part, FusedIA3Part):
        put(f"{path}.loras.{saved_name}.lora_B", part.lora_B)
    elif isinstance(part, ScaledIA3Part):
        put(f"{path}.loras.{saved_name}.lora_B", part.ia3_l, shape=(part.ia3_l.shape[0], 1))


def tensor_names(model: nn.Module, name: str, saved_name: str | None = None) -> dict[str, str]:
    """AdapterHub's name of each tensor adapter `name` owns (with this model's module paths, the adapter
    called `saved_name` there) -> its key in `adapter_state`: the table `pl.load` and `export_adapterhub`
    translate by (the gradient check of tests/test_adapterhub.py maps AdapterHub's gradients through it)."""
    return {ah: key for ah, (key, _, _) in _key_map(model, name, saved_name or name).items()}


def _prompt_owner(attachment) -> str:
    """The module holding the embeddings the prompt follows ('bert' in BertFor..., '' in BertModel)."""
    path = next(iter(attachment.acts_on.get("input prompts", {""})))
    return path.rsplit(".", 1)[0] if "." in path else ""


def _from_adapterhub(model, name: str, raw: dict, saved_name: str, source: Path, state: dict) -> dict:
    """peftlab adapter-state key -> tensor, from AdapterHub's saved tensors (checked name by name)."""
    stacks = find_stacks(model, layout_for(model))
    attachment = require(model).adapters[name]
    owner = _prompt_owner(attachment) if "input prompts" in attachment.acts_on else None
    patterns = stack_patterns(layout_for(model), stacks)
    owner_of = owners(model, layout_for(model))
    saved = {normalize(k, patterns, owner, owner_of): v for k, v in raw.items()}
    expected = _key_map(model, name, saved_name)
    unexpected = [k for k in saved if k not in expected]
    if unexpected:
        raise PeftlabError(f"{source}: tensor '{unexpected[0]}' is unexpected for this adapter on this model")
    out = {}
    for ah_key, (key, shape, optional) in expected.items():
        if ah_key not in saved:
            if optional:
                continue
            raise PeftlabError(f"{source}: tensor '{ah_key}' is missing" + (T5_SHARED if ah_key.startswith(
                f"{SHARED}.") else ""))
        tensor = saved[ah_key]
        if tuple(tensor.shape) != tuple(shape):
            raise PeftlabError(f"{source}: tensor '{ah_key}' has shape {list(tensor.shape)}, expected {list(shape)}")
        out.setdefault(key, tensor.reshape(state[key].shape))    # (IA)^3: AdapterHub's (n, 1) is our (n,)
    return out


# --- writing ---------------------------------------------------------------------------------------------

EXPORTABLE = (Bottleneck, LoRA, PromptTuning, PrefixTuning)
BOTTLENECKS = (Bottleneck, SeqBn, DoubleSeqBn, ParBn, SeqBnInv, DoubleSeqBnInv, PHMAdapter, PeftlabCompacter,
               PeftlabCompacterPlusPlus, Compacter, CompacterPlusPlus)


def export_adapterhub(model: nn.Module, name: str | None, directory) -> Path:
    """Write adapter `name` as an AdapterHub adapter directory (`load_adapter` reads it): adapter_config.json,
    pytorch_adapter.bin (tensors only) and adapter.safetensors, and the static task head it trains."""
    controller = require(model)
    name = pick(controller, name)
    attachment = controller.adapters[name]
    config = attachment.config
    if isinstance(config, FusionConfig):   # AdapterHub's save_adapter_fusion (adapterhub_fusion.py)
        return export_adapterhub_fusion(model, name, directory)
    _check_exportable(name, config)
    stacks = find_stacks(model, layout_for(model))
    state = adapter_state(model, name)
    tensors = {ah: state[key].detach().to("cpu").reshape(shape).contiguous().clone()
               for ah, (key, shape, _) in _key_map(model, name, name).items()}
    if any(ah.startswith(f"{SHARED}.") for ah in tensors):
        raise PeftlabError(f"export_adapterhub: '{name}' shares PHM tensors across layers, which AdapterHub neither "
                           f"saves nor loads on this model{T5_SHARED}; use shared_phm_rule=False, shared_W_phm=False")
    meta = {"config": config_to_adapterhub(config, stacks), "hidden_size": _hidden_size(model),
            "model_class": type(model).__name__, "model_name": getattr(model.config, "_name_or_path", "") or "",
            "model_type": model.config.model_type, "name": name, "version": VERSION}
    head = {k[len("base."):]: v.detach().to("cpu").contiguous().clone() for k, v in state.items()
            if k.startswith("base.")}
    heads = layout_for(model).heads
    others = [k for k in head if k.split(".")[0] not in heads]
    if others:
        raise PeftlabError(f"export_adapterhub: '{name}' trains base tensor '{others[0]}', which an AdapterHub "
                           f"adapter cannot carry (only a task head can)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory, CONFIG, WEIGHTS, SAFE_WEIGHTS, meta, tensors)
    if head:
        head_meta = {"config": None, "hidden_size": meta["hidden_size"], "label2id": dict(model.config.label2id),
                     "model_class": meta["model_class"], "model_name": meta["model_name"],
                     "model_type": meta["model_type"], "name": None, "num_labels": model.config.num_labels,
                     "version": VERSION}
        _write(directory, HEAD_CONFIG, HEAD_WEIGHTS, SAFE_HEAD_WEIGHTS, head_meta, head)
    return directory


def _check_exportable(name: str, config) -> None:
    kind = type(config).__name__
    if not isinstance(config, EXPORTABLE) or (isinstance(config, Bottleneck) and (
            type(config) not in BOTTLENECKS or config.compat != "adapterhub")):
        raise PeftlabError(f"export_adapterhub writes adapters built with AdapterHub's conventions (pl.SeqBn, "
                           f"pl.DoubleSeqBn, pl.ParBn, pl.SeqBnInv, pl.DoubleSeqBnInv, a Bottleneck or PHMAdapter "
                           f"with compat='adapterhub', pl.adapterhub.Compacter, .CompacterPlusPlus, .LoRA, .IA3, "
                           f".PromptTuning, .PrefixTuning); '{name}' is a {kind}")
    if isinstance(config, Bottleneck):
        for key, ok in (("bottleneck_size", config.bottleneck_size is None), ("init_std", config.init_std is None),
                        ("init", config.init in ("bert", "zero_up"))):
            if not ok:
                raise PeftlabError(f"export_adapterhub: {kind}.{key}={getattr(config, key)!r} has no AdapterHub "
                                   f"equivalent")
    if config.unfreeze_layer_norms or config.unfreeze_lm_head:
        raise PeftlabError(f"export_adapterhub: '{name}' trains the model's layer norms or LM head, which an "
                           f"AdapterHub adapter cannot carry")


def _write(directory: Path, config_name: str, bin_name: str, safe_name: str, meta: dict, tensors: dict) -> None:
    """The weights as AdapterHub reads them by default (torch.save of tensors only) and as safetensors
    (`use_safetensors=True`, and peftlab's preference when reading), then the config."""
    atomic_write(directory / bin_name, lambda tmp: torch.save(tensors, tmp))
    atomic_write(directory / safe_name, lambda tmp: save_file(tensors, tmp, {"format": "pt"}))
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(directory / config_name, lambda tmp: Path(tmp).write_text(text))
