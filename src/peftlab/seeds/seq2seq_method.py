"""The method a Compacter / ATTEMPT JSON builds, from its adapter and prompt keys.

References: compacter `seq2seq/training_args.py:6-77` (AdapterTrainingArguments), `utils/utils.py:64-190`
(what trains), `third_party/models/t5/modeling_t5.py` (placement); ATTEMPT `attempt/options.py`,
`run_seq2seq.py:160-215` (prompt loading), `utils.py:84-149` (what trains).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..registry import get_method
from .attempt import attempt_method
from .base import Keys, Translation, as_list, refuse, resolve

ADAPTER_KEYS = {
    "train_task_adapters", "adapter_config_name", "task_reduction_factor", "non_linearity",
    "add_layer_norm_before_adapter", "add_layer_norm_after_adapter", "task_adapter_layers_encoder",
    "task_adapter_layers_decoder", "task_adapter_in_decoder", "add_adapter_in_feed_forward",
    "add_adapter_in_self_attention", "unfreeze_lm_head", "unfreeze_layer_norms",
    "hypercomplex_adapters", "hypercomplex_division", "learn_phm", "hypercomplex_nonlinearity",
    "shared_phm_rule", "factorized_phm", "shared_W_phm", "factorized_phm_rule", "phm_c_init", "phm_rank",
    "phm_init_range", "low_rank_adapters", "low_rank_w_init", "low_rank_rank",
}
OTHER_KEYS = {
    "intrinsic_model", "intrinsic_said", "intrinsic_dim", "intrinsic_projection", "bitfit",
    "freeze_bitfit_lm_head", "freeze_bitfit_lm_head_all", "prefix_tuning", "prefix_dim", "init_prefix_from_vocab",
}
ATTEMPT_ONLY = {
    "attn_prefix_tuning", "prompt_embedding_path", "load_prefix_embeddings", "temperature", "attn_learning_rate",
    "attn_method", "shared_attn", "prefix_num", "multi_task", "ignore_target", "load_attention", "attn_path",
    "attn_path_sub", "load_layer_norm", "layer_norm_dir", "fix_attention", "learned_temperature",
    "target_prompt_embedding_path", "eval_all_at_last", "attn_prefix", "attn_method_name", "lang_name",
}
METHOD_KEYS = ADAPTER_KEYS | OTHER_KEYS | ATTEMPT_ONLY
# copied when present: original key -> method field
ADAPTER_FIELDS = {
    "task_reduction_factor": "reduction_factor", "non_linearity": "non_linearity",
    "add_layer_norm_before_adapter": "adapter_layernorm_before", "unfreeze_lm_head": "unfreeze_lm_head",
    "unfreeze_layer_norms": "unfreeze_layer_norms", "task_adapter_layers_encoder": "encoder_layers",
    "task_adapter_layers_decoder": "decoder_layers",
}
PHM_FIELDS = {
    "hypercomplex_division": "phm_dim", "learn_phm": "learn_phm", "hypercomplex_nonlinearity":
    "hypercomplex_nonlinearity", "shared_phm_rule": "shared_phm_rule", "factorized_phm": "factorized_phm_W",
    "shared_W_phm": "shared_W_phm", "factorized_phm_rule": "factorized_phm_rule", "phm_c_init": "phm_c_init",
    "phm_rank": "phm_rank", "phm_init_range": "phm_init_range",
}
# the code bases' defaults where they differ from peftlab's (training_args.py / options.py)
ADAPTER_DEFAULTS = {"reduction_factor": 16, "non_linearity": "swish", "adapter_layernorm_before": False,
                    "phm_dim": 8, "shared_phm_rule": False, "factorized_phm_W": False, "phm_init_range": 0.01}


def method_for(keys: Keys, out: Translation, code_base: str, tasks: list[str], do_train: bool,
               root: Path | None) -> tuple[dict, dict]:
    """(method mapping, {dotted run key: (value, origin)})."""
    if keys.get("attn_prefix_tuning", False):
        method, extra = attempt_method(keys, out, tasks, do_train, root)
    elif keys.get("prefix_tuning", False):
        method, extra = _prompt(keys, out, code_base, root), {}
    elif keys.get("intrinsic_model", False):
        method, extra = _intrinsic(keys), {}
    elif keys.get("bitfit", False):
        method, extra = _bitfit(keys, out), {}
    elif keys.get("train_task_adapters", False):
        method, extra = _adapter(keys, out, tasks)
    else:
        method, extra = {"method": "full"}, {}
    _consume_unused(keys, out, method["method"])
    if code_base in getattr(get_method(method["method"]).config_cls, "compat_choices", ()):
        method["compat"] = code_base
    # the task-name prefix is dropped exactly when task adapters train (compacter run_seq2seq.py:386;
    # ATTEMPT run_seq2seq.py:264,274: add_prefix = not train_task_adapters)
    if keys.get("train_task_adapters", False):
        extra["data.task_prefix"] = (False, "train_task_adapters (no task-name prefix in the source)")
    return method, extra


def _consume_unused(keys: Keys, out: Translation, method: str) -> None:
    """Keys of another family than the one built: the code reads them only for that family."""
    for key in sorted(METHOD_KEYS):
        if key in keys and key not in keys.used:
            value = keys.get(key)
            if value in (None, False, [], ""):
                out.ignore(key, "off")
            else:
                out.ignore(key, f"{value!r}: read only by another method family than {method}")


def _adapter(keys: Keys, out: Translation, tasks: list[str]) -> tuple[dict, dict]:
    name = keys.get("adapter_config_name", "adapter")
    if name != "adapter":
        refuse(out.source, f"adapter_config_name: {name!r}", "the code knows only 'adapter' "
                                                              "(adapters/adapter_configuration.py:56-69)")
    fields = {**ADAPTER_DEFAULTS, "adapter_layernorm_after": keys.get("add_layer_norm_after_adapter", True)}
    fields.update({new: keys.take(old) for old, new in ADAPTER_FIELDS.items() if keys.has(old)})
    attention = keys.get("add_adapter_in_self_attention", True)
    feed_forward = keys.get("add_adapter_in_feed_forward", True)
    if not (attention or feed_forward):
        refuse(out.source, "add_adapter_in_self_attention", "and add_adapter_in_feed_forward both false: "
                                                            "no adapter anywhere")
    fields.update(mh_adapter=attention, output_adapter=feed_forward)
    if not keys.get("task_adapter_in_decoder", True):
        fields["decoder_layers"] = []        # modeling_t5.py:876,1525-1526: no decoder adapters
    if keys.get("hypercomplex_adapters", False):
        fields.update({new: keys.take(old) for old, new in PHM_FIELDS.items() if keys.has(old)})
        method = "phm_adapter"
        if fields["factorized_phm_W"] and fields["shared_phm_rule"]:   # the paper's names for these two
            method = "compacter" if attention else "compacter++"
    elif keys.get("low_rank_adapters", False):
        fields["low_rank_rank"] = keys.get("low_rank_rank", 1)
        fields["low_rank_w_init"] = keys.get("low_rank_w_init", "glorot-uniform")
        method = "low_rank_adapter"
    else:
        method = "houlsby"
    fields = {k: v for k, v in fields.items() if k in _fields_of(method)}
    extra = {}
    if len(tasks) > 1:   # one adapter per task, each batch from one task (adapter_controller.py:41-48)
        extra = {"adapters": ("per_task", "task_name (one adapter per task)"),
                 "data.mixing": ("per_task", "the code's multitask sampler (one task per batch)")}
    return {"method": method, **fields}, extra


def _fields_of(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_method(method).config_cls)}


def _prompt(keys: Keys, out: Translation, code_base: str, root: Path | None) -> dict:
    length = keys.get("prefix_dim", 100)
    paths = [resolve(p, root) for p in as_list(keys.get("prompt_embedding_path"))]
    if keys.get("load_prefix_embeddings", False):
        if not paths:
            refuse(out.source, "load_prefix_embeddings", "needs prompt_embedding_path (the prompt file(s) to "
                                                         "start from)")
        return {"method": "spot", "sources": paths}      # ATTEMPT run_seq2seq.py:163-200
    if keys.get("init_prefix_from_vocab", False):
        # compacter takes rows 0..m-1, ATTEMPT samples m ids of range(5000) (modeling_t5.py:1759-1764);
        # both before the checkpoint loads, which compat reproduces (docs/fidelity.md C9)
        ids = "sample" if code_base == "attempt" else "first"
        return {"method": "prompt_tuning", "length": length, "init": "vocab", "vocab_ids": ids}
    return {"method": "prompt_tuning", "length": length, "init": "random"}


def _intrinsic(keys: Keys) -> dict:
    said = keys.get("intrinsic_said", False)          # training_args.py:40: DID unless said
    method = {"method": "intrinsic_said" if said else "intrinsic_did", "intrinsic_dim": keys.get("intrinsic_dim", 100),
              "projection": keys.get("intrinsic_projection", "fastfood")}
    return method


def _bitfit(keys: Keys, out: Translation) -> dict:
    if keys.get("freeze_bitfit_lm_head_all", False):
        refuse(out.source, "freeze_bitfit_lm_head_all", "BitFit with the whole lm_head frozen is not built "
                                                        "(set freeze_bitfit_lm_head instead)")
    return {"method": "bitfit", "freeze_bitfit_lm_head": keys.get("freeze_bitfit_lm_head", False)}
