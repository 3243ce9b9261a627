"""Translation of the seeds' flat config files (Compacter's and ATTEMPT's `run_seq2seq.py` JSON) into a
peftlab run config. The table is documented in docs/runner.md; every seed key is either translated or
listed as ignored (with the reason), and any other key is an error naming the closest known one.
"""
from __future__ import annotations

from ..config import closest
from ..errors import PeftlabError

SEED_MARKERS = ("model_name_or_path", "task_name")

# seed key -> dotted peftlab key, copied as is
DIRECT = {
    "model_name_or_path": "model.name", "tokenizer_name": "model.tokenizer",
    "max_source_length": "model.max_length", "max_target_length": "model.max_target_length",
    "learning_rate": "train.learning_rate", "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size", "per_device_eval_batch_size": "train.eval_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps", "warmup_steps": "train.warmup_steps",
    "weight_decay": "train.weight_decay", "seed": "train.seed", "eval_steps": "train.eval_steps",
    "logging_steps": "train.log_steps", "max_grad_norm": "train.max_grad_norm",
    "early_stopping_patience": "train.early_stopping_patience",
    "output_dir": "output_dir", "overwrite_output_dir": "overwrite",
    "max_train_samples": "data.max_train_samples", "max_val_samples": "data.max_eval_samples",
    "max_eval_samples": "data.max_eval_samples", "data_dir": "data.dir", "description": "description",
    "label_smoothing": "train.label_smoothing", "label_smoothing_factor": "train.label_smoothing",
}
# keys that configure the method; read by `_method`
METHOD_KEYS = {
    "train_task_adapters", "task_reduction_factor", "reduction_factor", "non_linearity", "adapter_config_name",
    "add_adapter_in_feed_forward", "add_adapter_in_self_attention", "add_layer_norm_before_adapter",
    "add_layer_norm_after_adapter", "task_adapter_layers_encoder", "task_adapter_layers_decoder",
    "task_adapter_in_decoder", "hypercomplex_adapters", "hypercomplex_division", "factorized_phm",
    "factorized_phm_rule", "shared_phm_rule", "shared_W_phm", "learn_phm", "phm_c_init", "phm_init_range",
    "phm_rank", "hypercomplex_nonlinearity", "low_rank_adapters", "low_rank_rank", "low_rank_w_init",
    "prefix_tuning", "prefix_dim", "init_prefix_from_vocab", "intrinsic_model", "intrinsic_said",
    "intrinsic_dim", "intrinsic_projection", "bitfit", "freeze_bitfit_lm_head", "unfreeze_lm_head",
    "unfreeze_layer_norms", "attn_prefix_tuning", "prompt_embedding_path", "load_prefix_embeddings",
    "temperature", "attn_learning_rate", "attn_method", "shared_attn", "prefix_num", "multi_task",
    "fix_t5", "ignore_target", "load_attention", "attn_path",
}
# accepted and ignored: peftlab always does this, or it does not apply
IGNORED = {
    "eval_dataset_name", "test_dataset_name", "dataset_config_name", "eval_dataset_config_name",
    "test_dataset_config_name", "do_train", "do_eval", "do_test", "predict_with_generate", "compute_memory",
    "compute_time", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "save_steps", "save_strategy", "save_prefix_only", "print_num_parameters",
    "report_to", "ignore_pad_token_for_loss", "pad_to_max_length", "split_validation_test",
    "max_test_samples", "fp16", "bf16", "evaluation_strategy", "eval_strategy", "max_steps", "task_name",
    "overwrite_cache", "preprocessing_num_workers", "warmup_ratio", "logging_dir", "run_name",
    "do_predict", "adafactor", "num_beams", "val_max_target_length",
    "test_max_target_length", "non_linearity_prefix", "eval_all_at_last", "dev_eval", "dev_test",
}


def is_seed_config(data: dict) -> bool:
    return any(key in data for key in SEED_MARKERS)


def translate_if_seed(data: dict) -> dict:
    return translate(data) if is_seed_config(data) else data


def translate(seed: dict) -> dict:
    """A Compacter / ATTEMPT config mapping -> a peftlab run config mapping."""
    known = set(DIRECT) | METHOD_KEYS | IGNORED
    for key in seed:
        if key not in known:
            raise PeftlabError(f"unknown seed config key '{key}'{closest(key, known)}")
    out: dict = {"model": {}, "train": {}, "data": {}}
    for key, target in DIRECT.items():
        if key in seed and seed[key] is not None:
            section, _, name = target.rpartition(".")
            (out[section] if section else out)[name] = seed[key]
    tasks = seed.get("task_name", [])
    out["tasks"] = [tasks] if isinstance(tasks, str) else list(tasks)
    out["data"]["splits"] = "paper" if seed.get("split_validation_test", True) else "official"
    if (seed.get("max_steps") or 0) > 0:
        out["train"]["max_steps"] = seed["max_steps"]
    strategy = seed.get("evaluation_strategy", seed.get("eval_strategy"))
    if strategy in ("epoch", "steps", "no"):
        out["train"]["eval_strategy"] = strategy
    if seed.get("fp16") or seed.get("bf16"):
        out["train"]["precision"] = "bf16"   # fp16 is a GPU-only choice; bf16 runs everywhere
    out["method"], extra = _method(seed)
    for key, value in extra.items():
        section, _, name = key.rpartition(".")
        (out[section] if section else out)[name] = value
    return out


def _method(seed: dict) -> tuple[dict, dict]:
    """The method mapping and any run-level keys it implies (ATTEMPT's attention learning rate)."""
    switches = {k: seed[k] for k in ("unfreeze_lm_head", "unfreeze_layer_norms") if k in seed}
    extra: dict = {}
    if seed.get("attn_prefix_tuning"):
        method = {"method": "attempt", **_copy(seed, {"prefix_dim": "length", "temperature": "temperature"})}
        sources = seed.get("prompt_embedding_path")
        if sources:
            method["sources"] = [sources] if isinstance(sources, str) else list(sources)
        tasks = seed.get("task_name", [])
        if isinstance(tasks, list) and len(tasks) > 1:     # multi-task ATTEMPT: one target per task
            method["tasks"] = list(tasks)
        if seed.get("attn_learning_rate") is not None:
            # ATTEMPT's attention module (W_down, W_up, its LayerNorm) learns at its own rate
            extra["train.param_groups"] = [{"pattern": r"prompt\.(down|up|norm)\.",
                                            "learning_rate": seed["attn_learning_rate"]}]
    elif seed.get("prefix_tuning"):
        method = {"method": "prompt_tuning", **_copy(seed, {"prefix_dim": "length"}),
                  "init": "vocab" if seed.get("init_prefix_from_vocab") else "random"}
        path = seed.get("prompt_embedding_path")
        if seed.get("load_prefix_embeddings") and path:   # start from saved prompt(s): SPoT
            method = {"method": "spot", "sources": [path] if isinstance(path, str) else list(path)}
    elif seed.get("intrinsic_model"):
        method = {"method": "intrinsic_said" if seed.get("intrinsic_said", True) else "intrinsic_did",
                  **_copy(seed, {"intrinsic_dim": "intrinsic_dim", "intrinsic_projection": "projection"})}
    elif seed.get("bitfit"):
        method = {"method": "bitfit", **_copy(seed, {"freeze_bitfit_lm_head": "freeze_bitfit_lm_head"})}
    elif seed.get("train_task_adapters"):
        method = _adapter(seed)
        tasks = seed.get("task_name", [])
        if isinstance(tasks, list) and len(tasks) > 1:   # Compacter: one adapter per task
            extra["adapters"] = "per_task"
            extra["data.mixing"] = "per_task"
    else:
        method = {"method": "full"}
    return {**method, **switches}, extra


def _adapter(seed: dict) -> dict:
    common = _copy(seed, {"task_reduction_factor": "reduction_factor", "reduction_factor": "reduction_factor",
                          "non_linearity": "non_linearity", "add_layer_norm_before_adapter": "adapter_layernorm_before",
                          "add_layer_norm_after_adapter": "adapter_layernorm_after",
                          "task_adapter_layers_encoder": "encoder_layers",
                          "task_adapter_layers_decoder": "decoder_layers"})
    attention = seed.get("add_adapter_in_self_attention", True)
    if seed.get("hypercomplex_adapters"):
        phm = _copy(seed, {"hypercomplex_division": "phm_dim", "shared_phm_rule": "shared_phm_rule",
                           "factorized_phm": "factorized_phm_W", "factorized_phm_rule": "factorized_phm_rule",
                           "phm_rank": "phm_rank", "learn_phm": "learn_phm", "phm_c_init": "phm_c_init",
                           "phm_init_range": "phm_init_range", "shared_W_phm": "shared_W_phm"})
        if seed.get("factorized_phm") and seed.get("shared_phm_rule", True):
            name = "compacter" if attention else "compacter++"
        else:
            name = "phm_adapter"
        return {"method": name, **common, **phm}
    if seed.get("low_rank_adapters"):
        return {"method": "low_rank_adapter", **common, **_copy(seed, {"low_rank_rank": "low_rank_rank"})}
    if seed.get("adapter_config_name") == "pfeiffer":
        # Compacter's "pfeiffer": after self-attention only (DESIGN §3)
        return {"method": "bottleneck", "mh_adapter": True, "output_adapter": False, **common}
    if not attention:
        return {"method": "pfeiffer", **common}
    return {"method": "houlsby", **common}


def _copy(seed: dict, names: dict) -> dict:
    return {new: seed[old] for old, new in names.items() if old in seed and seed[old] is not None}
