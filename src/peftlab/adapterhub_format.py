"""AdapterHub's adapter files as data: its config keys <-> peftlab configs, its tensor names <-> peftlab's
adapter state (adapters 1.3: configuration/adapter_config.py, loading.py and the models' mixins).

AdapterHub numbers an encoder-decoder's layers across both stacks (the decoder's after the encoder's:
models/t5/mixin_t5.py:103-112, models/bart/mixin_bart.py:92-97); peftlab numbers each stack from 0, so
`leave_out` is translated both ways.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

from .adapterhub_names import normalize_owned
from .config import MethodConfig
from .errors import PeftlabError
from .methods.bottleneck import Bottleneck
from .methods.lora_adapterhub import AdapterHubIA3, AdapterHubLoRA
from .methods.phm import PHMAdapter, PHMLinear
from .methods.prefix_adapterhub import AdapterHubPrefixTuning
from .methods.prompt_adapterhub import AdapterHubPromptTuning
from .targeting import LayerSelection

VERSION = "adapters.1.3.0"     # the AdapterHub release whose format is written

# AdapterHub bottleneck key -> peftlab Bottleneck field (compat="adapterhub" gives them AdapterHub's meaning)
BN_FIELDS = {"mh_adapter": "mh_adapter", "output_adapter": "output_adapter", "reduction_factor": "reduction_factor",
             "non_linearity": "non_linearity", "original_ln_before": "original_ln_before",
             "ln_before": "adapter_layernorm_before", "ln_after": "adapter_layernorm_after", "is_parallel": "parallel",
             "scaling": "scaling", "residual_before_ln": "residual_before_ln",
             "adapter_residual_before_ln": "adapter_residual_before_ln", "dropout": "dropout", "init_weights": "init",
             "inv_adapter": "inv_adapter", "inv_adapter_reduction_factor": "inv_adapter_reduction_factor"}
BN_REQUIRED = ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity")   # BnConfig's required fields
# keys peftlab reads at AdapterHub's default value only: any other value changes what is computed
BN_NEUTRAL = {"original_ln_after": True, "use_gating": False, "cross_adapter": False, "stochastic_depth": 0.0}
# PHMAdapter's fields (the same names) with phm_layer set; without it AdapterHub never reads them
PHM_KEYS = ("phm_dim", "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "phm_c_init",
            "phm_init_range", "learn_phm", "hypercomplex_nonlinearity", "phm_rank", "phm_bias")
BN_IGNORED = {"init_weights_seed"}
INITS = {"bert": "bert", "mam_adapter": "zero_up"}      # AdapterHub init_weights -> peftlab init
# AdapterHub accepts "phm" too; every name draws the same blocks there (methods/modeling.py:822-835)
PHM_INITS = {"phm": "glorot-normal"}
LORA_FIELDS = ("selfattn_lora", "intermediate_lora", "output_lora", "attn_matrices", "r", "alpha", "dropout",
               "composition_mode", "init_weights")
LORA_NEUTRAL = {"use_gating": False, "use_dora": False, "vera_d": None, "vera_b": None, "dtype": None}
PROMPT_FIELDS = ("prompt_length", "prompt_init", "prompt_init_text", "combine")
PREFIX_FIELDS = ("encoder_prefix", "cross_prefix", "flat", "prefix_length", "bottleneck_size", "non_linearity",
                 "dropout")
PREFIX_NEUTRAL = {"use_gating": False}
# keys that only seed the initialization, or (shared_gating) only matter with a refused option
IGNORED = {"architecture", "init_weights_seed", "random_uniform_scale", "shared_gating"}
# the BnConfig keys AdapterHub writes, with its defaults (for keys peftlab has no field for)
BN_WRITTEN = {"original_ln_after": True, "init_weights_seed": None, "use_gating": False, "inv_adapter": None,
              "inv_adapter_reduction_factor": None, "cross_adapter": False, "phm_layer": False, "phm_dim": 4,
              "factorized_phm_W": True, "shared_W_phm": False, "shared_phm_rule": True, "factorized_phm_rule": False,
              "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": True,
              "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True, "stochastic_depth": 0.0}


def is_adapterhub(meta: dict) -> bool:
    """An AdapterHub adapter_config.json (HF PEFT writes one too, with `peft_type` and no `config`)."""
    return "peft_type" not in meta and isinstance(meta.get("config"), (dict, str)) and (
        "model_class" in meta or "version" in meta)


def config_from_adapterhub(meta: dict, stacks: dict, where) -> MethodConfig:
    """The peftlab config computing what AdapterHub computes for `meta["config"]`; one line naming the
    first key it cannot honour."""
    config = meta.get("config")
    if not isinstance(config, dict):
        raise PeftlabError(f"{where}: config {config!r} names an AdapterHub preset instead of saving it; "
                           f"only saved configs (a mapping of keys) are read")
    architecture = config.get("architecture")
    if architecture is None:
        return _bottleneck(config, stacks, where)
    if architecture == "lora":
        return _lora(config, meta.get("version"), stacks, where)
    if architecture == "prompt_tuning":
        return _build(AdapterHubPromptTuning, _plain(config, PROMPT_FIELDS, {}, where), where)
    if architecture == "prefix_tuning":
        fields = _plain(config, PREFIX_FIELDS, PREFIX_NEUTRAL, where, stacks)
        return _build(AdapterHubPrefixTuning, fields, where)
    raise PeftlabError(f"{where}: config.architecture={architecture!r}: AdapterHub's {architecture} adapters are "
                       f"not read yet (docs/adapterhub.md lists what is)")


def _plain(config: dict, names, neutral: dict, where, stacks=None) -> dict:
    fields = {}
    for key, value in config.items():
        if key in names:
            fields[key] = value
        elif key in neutral:
            _require(key, value, neutral[key], where)
        elif key == "leave_out" and stacks is not None:
            fields.update(layer_fields(value, stacks, where))
        elif key not in IGNORED:
            raise PeftlabError(f"{where}: config key '{key}' is not an AdapterHub option peftlab reads")
    return fields


def _require(key, value, neutral, where) -> None:
    if value != neutral and not (neutral is False and value is None):
        raise PeftlabError(f"{where}: config.{key}={value!r} is not supported yet (peftlab reads {neutral!r})")


def _bottleneck(config: dict, stacks: dict, where) -> Bottleneck:
    missing = [key for key in BN_REQUIRED if key not in config]
    if missing:
        raise PeftlabError(f"{where}: config lacks '{missing[0]}' (a saved AdapterHub bottleneck config has it)")
    fields = {"compat": "adapterhub", "init": "bert"}    # BnConfig's default init_weights
    phm = bool(config.get("phm_layer"))
    for key, value in config.items():
        if key in BN_FIELDS:
            fields[BN_FIELDS[key]] = value
        elif key in BN_NEUTRAL:
            _require(key, value, BN_NEUTRAL[key], where)
        elif key == "leave_out":
            fields.update(layer_fields(value, stacks, where))
        elif key in PHM_KEYS:
            if phm:
                fields[key] = PHM_INITS.get(value, value) if key == "hypercomplex_nonlinearity" else value
        elif key == "invertible_adapter" and isinstance(value, dict):    # adapters 1.0's spelling
            fields.update(inv_adapter=value.get("block_type"),
                          inv_adapter_reduction_factor=value.get("reduction_factor"))
        elif key not in BN_IGNORED and key not in ("architecture", "phm_layer"):
            raise PeftlabError(f"{where}: config key '{key}' is not an AdapterHub bottleneck option peftlab reads")
    if fields["init"] not in INITS:
        raise PeftlabError(f"{where}: config.init_weights={fields['init']!r} is not supported "
                           f"(peftlab reads {', '.join(INITS)})")
    fields["init"] = INITS[fields["init"]]
    if isinstance(fields["reduction_factor"], Mapping):
        raise PeftlabError(f"{where}: config.reduction_factor: a per-layer mapping is not supported yet")
    if fields.get("scaling") == "channel":
        raise PeftlabError(f"{where}: config.scaling='channel' is not supported yet (a float or 'learned' is)")
    if isinstance(fields["non_linearity"], str):
        fields["non_linearity"] = fields["non_linearity"].lower()     # AdapterHub lowercases it (modeling.py:26)
    if fields.get("parallel"):
        fields["original_ln_before"] = False      # a parallel adapter never reads it (modeling.py:285-307)
    return _build(PHMAdapter if phm else Bottleneck, fields, where)


def _lora(config: dict, version, stacks: dict, where) -> AdapterHubLoRA:
    fields = _plain(config, LORA_FIELDS, LORA_NEUTRAL, where, stacks)
    if _before_1_1(version) and "r" in fields and fields["r"] != fields.get("alpha", 8):
        # AdapterHub's loader rewrites alpha = r for LoRAs saved before adapters 1.1 (loading.py:411-425)
        warnings.warn(f"{where}: LoRA saved by {version} with r != alpha: alpha is set to r, as AdapterHub's "
                      f"loader does (its earlier versions scaled by 1)")
        fields["alpha"] = fields["r"]
    cls = AdapterHubIA3 if fields.get("composition_mode") == "scale" else AdapterHubLoRA
    return _build(cls, fields, where)


def _before_1_1(version) -> bool:
    """An `adapters.X.Y.Z` version older than 1.1 (AdapterHub checks only its own package's versions)."""
    match = re.fullmatch(r"adapters\.(\d+)\.(\d+)(?:\.\d+)?\S*", version) if isinstance(version, str) else None
    return match is not None and (int(match.group(1)), int(match.group(2))) < (1, 1)


def _build(cls, fields: dict, where):
    try:
        return cls(**fields)
    except PeftlabError as err:
        raise PeftlabError(f"{where}: {err}") from None


def layer_fields(leave_out, stacks: dict, where) -> dict:
    """AdapterHub's `leave_out` (layer ids across the stacks) as peftlab's per-stack layer fields."""
    if not isinstance(leave_out, (list, tuple)) or not all(isinstance(i, int) for i in leave_out):
        raise PeftlabError(f"{where}: config.leave_out must be a list of layer ids, got {leave_out!r}")
    if not leave_out:
        return {}
    if "encoder" in stacks and "decoder" in stacks:
        n_enc, n_dec = stacks["encoder"][1], stacks["decoder"][1]
        return {"encoder_layers": [i for i in range(n_enc) if i not in leave_out],
                "decoder_layers": [j for j in range(n_dec) if n_enc + j not in leave_out]}
    (_, n), = stacks.values()
    return {"leave_out": [i for i in leave_out if 0 <= i < n]}   # AdapterHub skips ids no layer has


def global_leave_out(config, stacks: dict) -> list[int]:
    """peftlab's layer fields as AdapterHub's `leave_out`: the ids, across the stacks, of unused layers."""
    selection = LayerSelection(config.layers, config.encoder_layers, config.decoder_layers, config.leave_out)
    out, offset = [], 0
    for stack in sorted(stacks, key=lambda s: s != "encoder"):    # the encoder's layers come first
        n = stacks[stack][1]
        used = set(selection.indices(stack, n))
        out += [offset + i for i in range(n) if i not in used]
        offset += n
    return out


def config_to_adapterhub(config, stacks: dict) -> dict:
    """The AdapterHub config dict (as its `save_adapter` writes it) of a peftlab config that computes it."""
    if isinstance(config, AdapterHubPromptTuning):
        return {"architecture": "prompt_tuning", "init_weights_seed": None,
                **{key: getattr(config, key) for key in PROMPT_FIELDS}}
    leave_out = global_leave_out(config, stacks)
    if isinstance(config, AdapterHubPrefixTuning):
        return {"architecture": "prefix_tuning", "leave_out": leave_out, "init_weights_seed": None,
                "shared_gating": True, **PREFIX_NEUTRAL, **{key: getattr(config, key) for key in PREFIX_FIELDS}}
    if isinstance(config, AdapterHubLoRA):
        out = {"architecture": "lora", "leave_out": leave_out, "init_weights_seed": None,
               **{key: getattr(config, key) for key in LORA_FIELDS}, **LORA_NEUTRAL}
        out["attn_matrices"] = list(config.attn_matrices)
        return out
    inits = {peftlab: ah for ah, peftlab in INITS.items()}
    out = {ah: getattr(config, field) for ah, field in BN_FIELDS.items()}
    out.update({k: v for k, v in BN_WRITTEN.items() if k not in out}, leave_out=leave_out,
               init_weights=inits.get(config.init, "bert"))    # a PHM adapter's "near_identity": no init
    if float(config.reduction_factor).is_integer():    # AdapterHub sizes shared PHM blocks with `//` on it
        out["reduction_factor"] = int(config.reduction_factor)
    if isinstance(config, PHMAdapter):
        out.update({key: getattr(config, key) for key in PHM_KEYS}, phm_layer=True)
        if config.phm_init_range is None:     # peftlab's default is AdapterHub's: a shared rule's std 1e-4
            out["phm_init_range"] = BN_WRITTEN["phm_init_range"]
    return out


# --- tensor names ------------------------------------------------------------------------------------

# where AdapterHub keeps a layer's bottleneck adapters, relative to the layer: the sublayer module that is
# its BottleneckLayer (BERT: models/bert/mixin_bert.py:35-55; T5: models/t5/mixin_t5.py:35-60, the FFN is
# layer[-1]) or the layer's attention_adapters / output_adapters (GPT-2, BART, Llama mixins)
BN_HOMES = {"bert": {"attn": "attention.output", "ffn": "output"},
            "t5": {"attn": "layer.0", "ffn": {"encoder": "layer.1", "decoder": "layer.2"}}}
DEFAULT_BN_HOME = {"attn": "attention_adapters", "ffn": "output_adapters"}
PROMPT_HOME = "prompt_tuning.prompt_tunings"


def bottleneck_home(layout_name: str, location: str, stack: str) -> str:
    home = BN_HOMES.get(layout_name, DEFAULT_BN_HOME)[location]
    return home[stack] if isinstance(home, dict) else home


def bottleneck_leaves(net) -> list[tuple[str, object, bool]]:
    """(AdapterHub leaf name, peftlab tensor, optional) of one bottleneck net. AdapterHub's input LayerNorm
    sits inside its `adapter_down` Sequential and is also `adapter_norm_before`: one tensor, two names."""
    out = []
    if net.ln_before is not None:
        for leaf in ("weight", "bias"):
            tensor = getattr(net.ln_before, leaf)
            out += [(f"adapter_down.0.{leaf}", tensor, False), (f"adapter_norm_before.{leaf}", tensor, True)]
    down = "adapter_down.1" if net.ln_before is not None else "adapter_down.0"
    out += projection_leaves(down, net.down) + projection_leaves("adapter_up", net.up)
    if net.ln_after is not None:
        out += [("adapter_norm_after.weight", net.ln_after.weight, False),
                ("adapter_norm_after.bias", net.ln_after.bias, False)]
    if net.scale is not None:
        out.append(("scaling", net.scale, False))
    return out


def projection_leaves(prefix: str, layer) -> list[tuple[str, object, bool]]:
    """A projection's tensors: a Linear's weight and bias; a PHM layer's own rule and blocks (the same names
    in AdapterHub's PHMLayer, methods/modeling.py:601-670) and its bias `b`; shared ones live elsewhere."""
    if not isinstance(layer, PHMLinear):
        return [(f"{prefix}.weight", layer.weight, False), (f"{prefix}.bias", layer.bias, False)]
    out = [(f"{prefix}.{key}", tensor, False) for owned in ("rule", "blocks") if owned in layer._modules
           for key, tensor in layer._modules[owned].named_parameters()]
    return out + ([(f"{prefix}.b", layer.bias, False)] if layer.bias is not None else [])


def stack_patterns(layout, stacks: dict) -> list[tuple[re.Pattern, str]]:
    """(pattern of a saved key inside a stack, this model's path of that stack), to read keys saved from
    another class of the same model (BertModel's `encoder.layer.0...` into BertFor...'s `bert.encoder...`)."""
    return [(re.compile(rf"(?:^|\.){re.escape(layout.stacks[name].path)}\.(\d+)\.(.+)$"), path)
            for name, (path, _) in stacks.items()]


def normalize(key: str, patterns, prompt_owner: str | None, owner_of: dict | None = None) -> str:
    """A saved AdapterHub tensor name, spelled with this model's module paths."""
    for pattern, path in patterns:
        match = pattern.search(key)
        if match:
            return f"{path}.{match.group(1)}.{match.group(2)}"
    owned = normalize_owned(key, owner_of) if owner_of else None
    if owned is not None:
        return owned
    match = re.search(rf"(?:^|\.){re.escape(PROMPT_HOME)}\.(.+)$", key)
    if match and prompt_owner is not None:
        return f"{prompt_owner}.{PROMPT_HOME}.{match.group(1)}" if prompt_owner else f"{PROMPT_HOME}.{match.group(1)}"
    return key
