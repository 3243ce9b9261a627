"""Adapters released by the seed code bases, read safely and converted into peftlab's saved form.

nlprunners (zphang/nlprunners 37edf66) saves a single-task adapter as `model.p`: `torch.save` of a flat
mapping name -> tensor holding what `runscript.py` optimised (runscript.py:171-178): every adapter, every
LayerNorm of the model and the task head (nlpr/proj/adapters/modeling.py:153-158,
nlpr/proj/adapters/model_setup.py:43-72). It is read with `torch.load(weights_only=True)` only (never a
full unpickle) and converted into the tensors `pl.save` writes for the same adapter as a peftlab
`houlsby` with `unfreeze_layer_norms=True`:

    tensors = read_model_p("single/rte/model.p")
    config, weights = houlsby_from_model_p(tensors, source="single/rte/model.p")
    # config: a method-config mapping (config_from_dict(config) -> Houlsby)
    # weights: keys of peftlab_weights.safetensors (`parts.<module>.0.net.*`, `base.<parameter>`)

This module is low-level: it imports only peftlab.errors, peftlab.files, torch and safetensors.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .errors import PeftlabError
from .files import read_json, read_torch_tensors

# nlpr/proj/adapters/modeling.py:9-11 (AdapterConfig defaults; both runscripts use AdapterConfig(),
# runscript.py:96, runscript_multi_adapter.py:129)
NLPR_ACTIVATION, NLPR_ADAPTER_SIZE, NLPR_INIT_RANGE = "gelu", 64, 2e-4

# modeling.py:112-134: an Adapter inside every BertSelfOutput (attention.output) and BertOutput (output)
_ADAPTER = re.compile(r"^(?P<enc>roberta|bert)\.encoder\.layer\.(?P<layer>\d+)\.(?P<sub>attention\.output|output)"
                      r"\.(?P<what>adapter\.(?:down|up)_project|LayerNorm)\.(?P<kind>weight|bias)$")
_EMBEDDINGS_NORM = re.compile(r"^(?P<enc>roberta|bert)\.embeddings\.LayerNorm\.(?:weight|bias)$")
_POOLER = re.compile(r"^(?P<enc>roberta|bert)\.pooler\.dense\.(?:weight|bias)$")
# nlpr/proj/adapters/model_setup.py:19-66: the heads of BertForSequenceClassification / RobertaFor...
_HEADS = {"roberta": ("classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                      "classifier.out_proj.bias"),
          "bert": ("classifier.weight", "classifier.bias")}
# peftlab's Houlsby slots on BERT/RoBERTa: each sublayer's dropout output (src/peftlab/layouts/bert.py)
_PART = {"adapter.down_project": "net.down", "adapter.up_project": "net.up"}


def read_model_p(path) -> dict[str, torch.Tensor]:
    """The flat name -> tensor mapping a `model.p` holds, loaded with `weights_only=True` on the CPU.
    Anything else (code, objects, nested containers, non-tensor values) is one PeftlabError line."""
    data = read_torch_tensors(path)          # torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise PeftlabError(f"{path}: not a mapping of parameter names to tensors (holds a {type(data).__name__})")
    if not data:
        raise PeftlabError(f"{path}: holds no tensors")
    for key, value in data.items():
        if not isinstance(key, str):
            raise PeftlabError(f"{path}: not a mapping of parameter names to tensors (key {key!r} is a "
                               f"{type(key).__name__})")
        if not isinstance(value, torch.Tensor):
            raise PeftlabError(f"{path}: not a flat mapping of parameter names to tensors ('{key}' holds a "
                               f"{type(value).__name__})")
    return dict(data)


def houlsby_config(bottleneck_size: int = NLPR_ADAPTER_SIZE, train_head: bool = True) -> dict:
    """The peftlab method config of nlprunners' single adapter: Houlsby placement after the attention and
    FFN output dense+dropout, before residual+LayerNorm (modeling.py:62-67, 91-96); z + W_up gelu(W_down z
    + b_d) + b_u (:39-43), no scaling, no LayerNorm of its own; N(0, 2e-4) weights, zero biases (:45-51);
    every model LayerNorm trains (:153-158) and the task head (model_setup.py:69-72)."""
    return {"method": "houlsby", "bottleneck_size": int(bottleneck_size), "non_linearity": NLPR_ACTIVATION,
            "mh_adapter": True, "output_adapter": True, "parallel": False, "residual_before_ln": True,
            "adapter_layernorm_before": False, "adapter_layernorm_after": False, "scaling": 1.0,
            "init": "near_identity", "init_std": NLPR_INIT_RANGE, "unfreeze_layer_norms": True,
            "train_head": bool(train_head)}


def houlsby_from_model_p(tensors: dict, *, source: str = "model.p", drop_trained_pooler: bool = False,
                         keep_head: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(method config, weights keyed as peftlab_weights.safetensors) of a runscript.py `model.p`.

    The adapter of sublayer `<enc>.encoder.layer.i.<sub>` goes to `parts.<enc>.encoder.layer.i.<sub>.dropout
    .0.net.{down,up}.*`; LayerNorms and the head to `base.<name>`. RoBERTa's pooler is dropped: it is
    saved but never gets a gradient (RobertaClassificationHead reads token 0) and HF's current
    RobertaForSequenceClassification has none. BERT's pooler is trained by nlprunners (model_setup.py:
    26-31) and has no place in a peftlab Houlsby: refused unless `drop_trained_pooler` (the multi-adapter
    drops it anyway, multi_adapter_modeling.py:745-749). `keep_head=False` leaves the head out of both the
    weights and the adapter (train_head false): a mixed source whose head the mix does not start from."""
    encoder = _encoder_name(tensors, source)
    weights: dict[str, torch.Tensor] = {}
    layers: dict[int, set] = {}
    for key, tensor in tensors.items():
        match = _ADAPTER.match(key)
        if match and match["enc"] == encoder:
            layers.setdefault(int(match["layer"]), set()).add(key)
            weights[_peftlab_key(match)] = tensor
        elif _EMBEDDINGS_NORM.match(key) and key.startswith(encoder + "."):
            weights[f"base.{key}"] = tensor
        elif key in _HEADS[encoder]:
            if keep_head:
                weights[f"base.{key}"] = tensor
        elif _POOLER.match(key) and key.startswith(encoder + "."):
            if encoder == "bert" and not drop_trained_pooler:
                raise PeftlabError(f"{source}: '{key}' is BERT's pooler, which nlprunners trains "
                                   f"(nlpr/proj/adapters/model_setup.py:26-31) and a peftlab houlsby keeps frozen")
        else:
            raise PeftlabError(f"{source}: '{key}' is not a tensor of an nlprunners single adapter "
                               f"(adapters, LayerNorms, head: nlpr/proj/adapters/model_setup.py:69-72)")
    _check_complete(tensors, encoder, layers, source, keep_head)
    size = _check_shapes(tensors, encoder, sorted(layers), source)
    return houlsby_config(size, train_head=keep_head), weights


def _encoder_name(tensors: dict, source: str) -> str:
    names = {key.split(".", 1)[0] for key in tensors if _ADAPTER.match(key)}
    if len(names) != 1:
        found = ", ".join(sorted(names)) or "none"
        raise PeftlabError(f"{source}: expected the adapters of one BERT or RoBERTa encoder "
                           f"('<roberta|bert>.encoder.layer.<i>...adapter...'), found {found}")
    return names.pop()


def _peftlab_key(match) -> str:
    module = f"{match['enc']}.encoder.layer.{match['layer']}.{match['sub']}"
    if match["what"] == "LayerNorm":
        return f"base.{module}.LayerNorm.{match['kind']}"
    return f"parts.{module}.dropout.0.{_PART[match['what']]}.{match['kind']}"


def _check_complete(tensors: dict, encoder: str, layers: dict, source: str, head: bool) -> None:
    """Layers 0..L-1, each with both adapters and both LayerNorms; the embeddings' LayerNorm and the head."""
    wanted = [f"{encoder}.embeddings.LayerNorm.{k}" for k in ("weight", "bias")] + list(_HEADS[encoder] if head else ())
    for layer in range(max(layers) + 1):
        for sub in ("attention.output", "output"):
            for what in ("adapter.down_project", "adapter.up_project", "LayerNorm"):
                wanted += [f"{encoder}.encoder.layer.{layer}.{sub}.{what}.{k}" for k in ("weight", "bias")]
    missing = next((key for key in wanted if key not in tensors), None)
    if missing is not None:
        raise PeftlabError(f"{source}: tensor '{missing}' is missing (runscript.py:171-178 saves every adapter, "
                           f"LayerNorm and the head)")


def _check_shapes(tensors: dict, encoder: str, layers: list[int], source: str) -> int:
    """The adapter size; every tensor's shape must agree with the first down-projection's (k, d)."""
    first = tensors[f"{encoder}.encoder.layer.{layers[0]}.attention.output.adapter.down_project.weight"]
    if first.dim() != 2:
        raise PeftlabError(f"{source}: the down-projection weight has shape {list(first.shape)}, expected (size, d)")
    k, d = first.shape
    expected = {"adapter.down_project.weight": (k, d), "adapter.down_project.bias": (k,),
                "adapter.up_project.weight": (d, k), "adapter.up_project.bias": (d,),
                "LayerNorm.weight": (d,), "LayerNorm.bias": (d,)}
    for layer in layers:
        for sub in ("attention.output", "output"):
            for name, shape in expected.items():
                key = f"{encoder}.encoder.layer.{layer}.{sub}.{name}"
                if tuple(tensors[key].shape) != shape:
                    raise PeftlabError(f"{source}: tensor '{key}' has shape {list(tensors[key].shape)}, "
                                       f"expected {list(shape)}")
    return int(k)


def nlprunners_source(path, *, drop_trained_pooler: bool = False,
                      keep_head: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """`houlsby_from_model_p(read_model_p(path))`, messages naming the file."""
    return houlsby_from_model_p(read_model_p(path), source=str(path), drop_trained_pooler=drop_trained_pooler,
                                keep_head=keep_head)


def adapter_weights_paths(path) -> dict[str, str]:
    """An `adapter_weights.json` ({name: model.p path}, JSON order) with each path as nlprunners resolves
    it: as given when that exists, else joined to the JSON's folder (multi_adapter_modeling.py:718-725)."""
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise PeftlabError(f"{path}: expected a JSON object of adapter name -> model.p path")
    base = os.path.split(str(path))[0]
    out = {}
    for name, value in data.items():
        if not isinstance(value, str):
            raise PeftlabError(f"{path}: adapter '{name}': expected a path string, got {type(value).__name__}")
        out[str(name)] = value if os.path.exists(value) else os.path.join(base, value)
    return out


def is_model_p(path) -> bool:
    """A source given as a released `.p` file (not a peftlab adapter directory)."""
    return Path(path).suffix == ".p" and not Path(path).is_dir()
