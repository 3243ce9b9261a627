"""Interchange with HF PEFT for LoRA, IA3, prompt tuning and prefix tuning: write a directory `peft.PeftModel.from_pretrained` loads,
and attach an adapter from a directory HF PEFT saved. Tensor names map one to one:
`base_model.model.<module path>.lora_A.weight` <-> our part at <module path>."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .core import adapter_state, attach, detach, pick, require
from .errors import PeftlabError
from .files import atomic_write_pair, read_json, read_safetensors, read_torch_tensors
from .io import copy_into
from .layouts import layout_for
from .methods.ia3 import IA3
from .methods.lora import LoRA, LoRAPart
from .methods.prefix import PrefixTuning
from .methods.prompt import PromptTuning
from .methods.spot import SPoT
from .runtime import get_module
from .targeting import is_conv1d

_PREFIX = "base_model.model."
# HF PEFT options whose meaning peftlab's LoRA does not share: importing them would silently change outputs.
# HF PEFT options that change which weights or what computation an adapter holds, not read by peftlab:
# importing a file that sets one is refused rather than silently computing something else
_UNSUPPORTED = {"layer_replication": None, "trainable_token_indices": None, "exclude_modules": None,
                "target_parameters": None, "use_qalora": False, "alora_invocation_tokens": None}


def export_peft(model: nn.Module, name: str | None, directory) -> Path:
    """Write adapter `name` (LoRA or IA3) as an HF PEFT adapter directory."""
    controller = require(model)
    name = pick(controller, name)
    attachment = controller.adapters[name]
    config = attachment.config
    if isinstance(config, (PromptTuning, SPoT, PrefixTuning)):
        return _export_prompt(model, name, attachment, Path(directory))
    if not isinstance(config, (LoRA, IA3)):
        raise PeftlabError(f"export_peft supports LoRA, IA3, prompt and prefix tuning; '{name}' is {config.method}")
    paths = [path for path, _ in attachment.parts]
    fan_in_fan_out = any(is_conv1d(get_module(model, p)) for p in paths)
    meta = {"peft_type": "LORA" if isinstance(config, LoRA) else "IA3", "target_modules": sorted(paths),
            "fan_in_fan_out": fan_in_fan_out, "inference_mode": True, "task_type": None,
            "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None,
            "modules_to_save": _modules_to_save(model, attachment)}
    # base tensors it trains in place: a task head, layer norms (PEFT's modules_to_save), and with
    # train_biases every base bias (PEFT's bias="all", under its wrapped name inside a LoRA layer)
    tensors = {_wrapped_bias_name(key, paths): value
               for key, value in _claimed_tensors(model, attachment, _PREFIX).items()}
    for path, part in attachment.parts:
        key = f"{_PREFIX}{path}"
        if isinstance(part, LoRAPart):
            tensors[f"{key}.lora_A.weight"] = part.lora_A.weight
            tensors[f"{key}.lora_B.weight"] = part.lora_B.weight
            if part.lora_bias is not None:          # PEFT's lora_bias: s * (B A x + b)
                tensors[f"{key}.lora_B.bias"] = part.lora_bias
            if hasattr(part, "magnitude"):          # DoRA
                tensors[f"{key}.lora_magnitude_vector"] = part.magnitude
        else:
            feedforward = part.role == "input"
            tensors[f"{key}.ia3_l"] = part.ia3_l.reshape((1, -1) if feedforward else (-1, 1))
    if isinstance(config, LoRA):
        meta.update(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                    bias="all" if config.train_biases else "none",
                    use_rslora=config.rslora, lora_bias=config.bias, use_dora=config.dora,
                    **_patterns(attachment.parts, config))
    else:
        meta["feedforward_modules"] = sorted(p for p, part in attachment.parts if part.role == "input")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}
    _write_peft_pair(directory, tensors, meta)
    return directory


def _write_peft_pair(directory: Path, tensors: dict, meta: dict) -> None:
    """Both files written in full before either replaces an older export: a full disk leaves the previous
    export whole, never new weights beside an old config."""
    atomic_write_pair(directory / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, {"format": "pt"}),
                      directory / "adapter_config.json",
                      lambda _: lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))


def _patterns(parts, config) -> dict:
    """Each module whose rank or alpha differs from the config's, by its full path (PEFT's patterns)."""
    ranks, alphas = {}, {}
    for path, part in parts:
        r = part.lora_A.weight.shape[0]
        alpha = part.scaling * (r ** 0.5 if config.rslora else r)
        if r != config.r:
            ranks[re.escape(path)] = r
        if abs(alpha - config.alpha) > 1e-9 * max(1.0, abs(alpha)):
            alphas[re.escape(path)] = alpha
    return {"rank_pattern": ranks, "alpha_pattern": alphas}


def _modules_to_save(model, attachment) -> list[str] | None:
    """The modules owning the base tensors the adapter trains (PEFT matches modules_to_save by suffix),
    less those of which only the bias trains (train_biases: PEFT's bias="all" carries them)."""
    owners = {key.rsplit(".", 1)[0] for key in attachment.claimed if not key.endswith(".bias")}
    modules = sorted(owners if getattr(attachment.config, "train_biases", False)
                     else {key.rsplit(".", 1)[0] for key in attachment.claimed})
    return modules or None


def _wrapped_bias_name(key: str, wrapped_paths) -> str:
    """`PREFIX + path.bias` of a layer PEFT wraps in a LoRA layer is `PREFIX + path.base_layer.bias` there."""
    path = key[len(_PREFIX):].rpartition(".")[0]
    return f"{_PREFIX}{path}.base_layer.bias" if key.endswith(".bias") and path in wrapped_paths else key


def _claimed_tensors(model, attachment, prefix: str) -> dict:
    """The base tensors the adapter trains in place, under PEFT's names (a Host in a path adds
    `base_layer` to the live name). A tensor tied to another (an LM head sharing the input embedding)
    is refused: PEFT's modules_to_save would train a copy of one of them, not both."""
    params = dict(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, param in params.items():
        names_of.setdefault(id(param), []).append(name)

    def live(key: str):
        path, leaf = key.rsplit(".", 1)
        param = params[key] if key in params else params[f"{path}.base_layer.{leaf}"]
        tied = [n for n in names_of[id(param)] if n != key and n.rpartition(".")[0] != f"{path}.base_layer"]
        if tied:
            raise PeftlabError(f"export_peft: '{key}' is tied to '{tied[0]}'; HF PEFT's modules_to_save would "
                               "train a copy of one of them only (untie the weights before training to export)")
        return param
    return {f"{prefix}{key}": live(key) for key in attachment.claimed}


def _config_from_peft(meta: dict, source: Path, model, raw: dict):
    kind = meta.get("peft_type")
    if kind not in ("LORA", "IA3"):
        raise PeftlabError(f"{source}: peft_type {kind!r} cannot be imported yet (LORA and IA3 can)")
    for key, neutral in _UNSUPPORTED.items():
        if meta.get(key, neutral) not in (neutral, None, False, {}, "none"):
            raise PeftlabError(f"{source}: HF PEFT option {key}={meta[key]!r} is not supported by peftlab's {kind}")
    targets = meta.get("target_modules")
    targets = (targets,) if isinstance(targets, str) else tuple(targets or ())
    if not targets:
        raise PeftlabError(f"{source}: target_modules is empty")
    common = {"train_head": _saves_heads(meta, source, model), "layers": _layers(meta, source, model)}
    if kind == "LORA":
        bias = meta.get("bias") or "none"
        if bias not in ("none", "lora_only", "all") or (bias != "none" and meta.get("lora_bias")):
            raise PeftlabError(f"{source}: HF PEFT option bias={bias!r} (with lora_bias={meta.get('lora_bias')}) is "
                               f"not supported: peftlab imports bias='lora_only', 'all' or lora_bias, one of them")
        return LoRA(r=meta["r"], alpha=float(meta.get("lora_alpha", meta["r"])),
                    dropout=float(meta.get("lora_dropout", 0.0)), target_modules=targets,
                    rslora=bool(meta.get("use_rslora")), rank_pattern=dict(meta.get("rank_pattern") or {}),
                    alpha_pattern=dict(meta.get("alpha_pattern") or {}), dora=bool(meta.get("use_dora")),
                    # PEFT saves a bias only where the layer has one (Llama's projections have none)
                    bias=bias != "all" and any(k.endswith((".base_layer.bias", ".lora_B.bias")) for k in raw),
                    train_biases=bias == "all", **common)
    feedforward = meta.get("feedforward_modules") or ()
    feedforward = (feedforward,) if isinstance(feedforward, str) else tuple(feedforward)
    return IA3(target_modules=targets, feedforward_modules=feedforward, **common)


def _saves_heads(meta: dict, source: Path, model) -> bool:
    """PEFT's modules_to_save (set by itself for SEQ_CLS: classifier, score): the task head trains."""
    heads = layout_for(model).heads
    present = [m for m in meta.get("modules_to_save") or () if any(
        path == m or path.endswith("." + m) for path, _ in model.named_modules())]
    others = [m for m in present if m.split(".")[0] not in heads]
    if others:
        raise PeftlabError(f"{source}: modules_to_save {others[0]!r} is not a task head; peftlab imports the "
                           f"heads ({', '.join(heads)}) only")
    return bool(present)


def _layers(meta: dict, source: Path, model):
    """PEFT's layers_to_transform, numbered in the layer list `layers_pattern` names (when given): that
    list must be the one peftlab's layout numbers, the model's own stack of layers."""
    layers = meta.get("layers_to_transform")
    if layers is None:
        return None
    pattern = meta.get("layers_pattern")
    names = [pattern] if isinstance(pattern, str) else list(pattern or ())
    if names:
        found = {name for name in names for path, _ in model.named_modules()
                 if re.search(rf"(^|\.){re.escape(name)}\.\d+$", path)}
        if not found:
            raise PeftlabError(f"{source}: layers_pattern={pattern!r} names no numbered layer list of this model")
    return [layers] if isinstance(layers, int) else list(layers)


def _read_peft_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "adapter_model.safetensors").exists():
        return read_safetensors(directory / "adapter_model.safetensors")
    legacy = directory / "adapter_model.bin"
    if not legacy.exists():
        raise PeftlabError(f"{directory}: no adapter_model.safetensors (or adapter_model.bin) found")
    warnings.warn(f"{legacy}: legacy pickle-based file, read with torch.load(weights_only=True)")
    return read_torch_tensors(legacy)


def import_peft(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
                activate: bool = True) -> nn.Module:
    """Attach a LoRA or IA3 adapter that HF PEFT saved (`save_pretrained`) in `directory`."""
    directory = Path(directory)
    meta = read_json(directory / "adapter_config.json")
    if meta.get("peft_type") in ("PROMPT_TUNING", "PREFIX_TUNING"):
        return _import_prompt(model, directory, meta, name, trainable, activate)
    raw = _read_peft_weights(directory)
    config = _config_from_peft(meta, directory / "adapter_config.json", model, raw)
    name = name or "default"
    attach(model, config, name, activate=activate, trainable=trainable)
    try:
        parts = {path: part for path, part in require(model).adapters[name].parts}
        bias_of = lambda path: get_module(model, path).base_layer.bias.detach()  # noqa: E731
        if getattr(config, "train_biases", False):     # bias="all": base biases, kept as they are
            raw, bias_of = _without_wrapper_copies(raw), None
        tensors = dict(_our_name(key, tensor, parts, bias_of, directory) for key, tensor in raw.items())
        copy_into(adapter_state(model, name), tensors, directory / "adapter_model.safetensors")
    except BaseException:
        detach(model, name)
        raise
    return model


def _without_wrapper_copies(raw: dict) -> dict:
    """With bias="all" PEFT's state filter (every key holding "bias") also saves the biases of its
    modules_to_save wrapper's two copies (`head.original_module.bias`, `head.modules_to_save.bias`)
    beside the head's own `head.bias`: only the latter is the head."""
    return {k: v for k, v in raw.items() if ".original_module." not in k and ".modules_to_save." not in k}


def _our_name(key: str, tensor: torch.Tensor, parts: dict, bias_of, directory: Path) -> tuple[str, torch.Tensor]:
    """PEFT's saved name -> peftlab's adapter-state name (and value)."""
    if not key.startswith(_PREFIX):
        raise PeftlabError(f"{directory}: unexpected tensor name '{key}'")
    key = key[len(_PREFIX):]
    if key.endswith(".base_layer.bias") and bias_of is None:    # bias="all": a trained base bias
        return f"base.{key[: -len('.base_layer.bias')]}.bias", tensor
    if key.endswith(".base_layer.bias"):        # bias="lora_only": the trained bias of a wrapped layer
        path = key[: -len(".base_layer.bias")]
        return f"parts.{path}.0.lora_bias", (tensor - bias_of(path).to(tensor.dtype)) / parts[path].scaling
    if key.endswith(".lora_magnitude_vector"):  # DoRA's magnitude
        return f"parts.{key[: -len('.lora_magnitude_vector')]}.0.magnitude", tensor
    if key.endswith(".lora_B.bias"):            # lora_bias: s * (B A x + b), as peftlab's LoRA bias
        return f"parts.{key[: -len('.lora_B.bias')]}.0.lora_bias", tensor
    if ".lora_" in key or key.endswith(".ia3_l"):
        path, _, leaf = key.rpartition(".lora_" if ".lora_" in key else ".ia3_l")
        leaf = ("lora_" + leaf) if ".lora_" in key else "ia3_l"
        return f"parts.{path}.0.{leaf}", tensor.flatten() if leaf == "ia3_l" else tensor
    return f"base.{key}", tensor                 # modules_to_save: the task head


# --- prompt and prefix tuning: one tensor, `prompt_embeddings` -----------------------------------------

def _peft_task_type(model, layout) -> str:
    stacks = set(layout.stacks)
    if stacks == {"encoder", "decoder"}:
        return "SEQ_2_SEQ_LM"
    return "CAUSAL_LM" if stacks == {"decoder"} else "SEQ_CLS"


def _export_prompt(model, name, attachment, directory: Path) -> Path:
    """PEFT's encoder-only prompt (num_transformer_submodules=1), or a flat prefix on decoder-only models
    (PEFT's T5 prefix reuses layers and its BERT/BART prefixes shift positions that ours do not)."""
    config, controller = attachment.config, require(model)
    home, task = model.peftlab_adapters[name], _peft_task_type(model, controller.layout)
    meta = {"task_type": task, "inference_mode": True, "num_transformer_submodules": 1,
            "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None,
            "modules_to_save": _modules_to_save(model, attachment)}
    # a prompt-learning PeftModel holds the transformers model as `base_model` directly
    saved = _claimed_tensors(model, attachment, "base_model.")
    if isinstance(config, PrefixTuning):
        full_stack = config.stacks in (None, ("decoder",)) and config.layers is None and not config.leave_out
        if task != "CAUSAL_LM" or not config.shift_positions or not full_stack:
            raise PeftlabError(f"export_peft writes prefix tuning for decoder-only models with every layer "
                               f"and shift_positions on; '{name}' does not fit")
        prefix = home.prefix
        tensor = prefix.full()
        meta.update(peft_type="PREFIX_TUNING", num_virtual_tokens=prefix.length, num_layers=prefix.n_layers,
                    token_dim=prefix.heads * prefix.head_dim, num_attention_heads=prefix.heads,
                    prefix_projection=False)
    else:
        tensor = home.prompt.embedding.detach()
        meta.update(peft_type="PROMPT_TUNING", num_virtual_tokens=tensor.shape[0], token_dim=tensor.shape[1],
                    prompt_tuning_init="RANDOM")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"prompt_embeddings": tensor.detach().cpu().contiguous().clone(),
               **{k: v.detach().cpu().contiguous().clone() for k, v in saved.items()}}
    _write_peft_pair(directory, tensors, meta)
    return directory


def _encoder_prompt_rows(directory: Path, meta: dict, tensor, m: int, stacks) -> torch.Tensor:
    """The m rows PEFT prepends. With `num_transformer_submodules=2` (its default on seq2seq models) PEFT
    stores 2m rows, but its prompt-tuning forward and generate prepend only the first m to the encoder
    input (peft 0.21.2 peft_model.py:2495-2508, 2588): the other m never reach the model and get no
    gradient. They are left out, and a warning says so."""
    submodules = meta.get("num_transformer_submodules") or 1
    if submodules not in (1, 2) or (submodules == 2 and "encoder" not in stacks):
        raise PeftlabError(f"{directory}: num_transformer_submodules={submodules} does not fit this model")
    if tensor.dim() != 2 or tensor.shape[0] != m * submodules:
        raise PeftlabError(f"{directory}: prompt_embeddings has shape {list(tensor.shape)}, expected "
                           f"[{m * submodules}, width] for {m} virtual tokens x {submodules} submodules")
    if submodules == 2:
        warnings.warn(f"{directory}: num_transformer_submodules=2: rows {m}..{2 * m - 1} of prompt_embeddings "
                      "(the decoder half) are not imported; HF PEFT's prompt tuning never feeds them to the "
                      "model either, so the outputs are the same")
    return tensor[:m]


def _import_prompt(model, directory: Path, meta: dict, name, trainable, activate):
    kind, m = meta["peft_type"], int(meta.get("num_virtual_tokens", 0))
    if kind == "PREFIX_TUNING" and set(layout_for(model).stacks) != {"decoder"}:
        raise PeftlabError(f"{directory}: HF PEFT prefixes import on decoder-only models only")
    tensor = _read_peft_weights(directory).get("prompt_embeddings")
    if tensor is None:
        raise PeftlabError(f"{directory}: no 'prompt_embeddings' tensor")
    if kind == "PROMPT_TUNING":
        tensor = _encoder_prompt_rows(directory, meta, tensor, m, layout_for(model).stacks)
    config = (PromptTuning(length=m, train_head=False) if kind == "PROMPT_TUNING"
              else PrefixTuning(prefix_length=m, flat=True, train_head=False))
    key = "home.prompt.embedding" if kind == "PROMPT_TUNING" else "home.prefix.embedding"
    name = name or "default"
    attach(model, config, name, activate=activate, trainable=trainable)
    try:
        copy_into(adapter_state(model, name), {key: tensor}, directory / "adapter_model.safetensors")
    except BaseException:
        detach(model, name)
        raise
    return model
