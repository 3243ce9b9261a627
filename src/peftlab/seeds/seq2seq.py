"""Compacter's and ATTEMPT's `run_seq2seq.py` JSON files (rabeehk/compacter e123daa, AkariAsai/ATTEMPT
b5121e5), translated key by key into the same experiment.

Both read one JSON with `HfArgumentParser(...).parse_json_file` into transformers' Seq2SeqTrainingArguments
plus their own dataclasses (compacter `seq2seq/training_args.py`, `run_seq2seq.py:79-243`; ATTEMPT
`attempt/options.py`). That parser drops keys no dataclass declares; peftlab lists those as ignored when
the code's parser drops them, and refuses any key neither code base knows.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import PeftlabError
from ..tasks import get_task
from .base import Keys, Translation, as_list, refuse
from .seq2seq_method import ATTEMPT_ONLY, METHOD_KEYS, method_for

# transformers' training arguments both code bases use, copied as they are
COPIED = {
    "model_name_or_path": "model.name", "max_source_length": "model.max_length",
    "learning_rate": "train.learning_rate", "num_train_epochs": "train.epochs",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps", "warmup_steps": "train.warmup_steps",
    "warmup_ratio": "train.warmup_ratio", "weight_decay": "train.weight_decay", "seed": "train.seed",
    "max_grad_norm": "train.max_grad_norm", "label_smoothing_factor": "train.label_smoothing",
    "adam_epsilon": "train.adam_epsilon", "eval_steps": "train.eval_steps", "logging_steps": "train.log_steps",
    "max_train_samples": "data.max_train_samples", "output_dir": "output_dir",
    "overwrite_output_dir": "overwrite",
}
# no effect on what is trained or computed (file:line: compacter run_seq2seq.py / ATTEMPT options.py)
NO_EFFECT = {
    "save_steps": "checkpoint cadence: load_best_model_at_end saves at every evaluation",
    "save_total_limit": "disk use only", "save_strategy": "checkpoint cadence only",
    "print_num_parameters": "logging only", "compute_time": "logging only", "compute_memory": "logging only",
    "logging_dir": "logging only", "run_name": "logging only", "report_to": "logging only",
    "logging_strategy": "logging only", "logging_first_step": "logging only", "disable_tqdm": "display only",
    "overwrite_cache": "datasets cache only", "preprocessing_num_workers": "speed only",
    "dataloader_num_workers": "speed only", "cache_dir": "download cache only",
    "use_fast_tokenizer": "the same token ids", "model_revision": "hub access only",
    "use_auth_token": "hub access only", "per_device_eval_batch_size": "evaluation batching only",
    "dataset_config_name": "every task hard-codes its dataset config (compacter data/tasks.py:146-147)",
    "eval_dataset_config_name": "as dataset_config_name", "test_dataset_config_name": "as dataset_config_name",
    "max_seq_length": "in no dataclass: parse_json_file drops it (compacter run_seq2seq.py:247)",
    "prefix_length": "read nowhere (compacter run_seq2seq.py:94; ATTEMPT options.py:133)",
    "hidden_dim": "read nowhere (training_args.py:19)", "task_adapters": "read nowhere",
    "task_embeddings": "read nowhere", "normalize_phm_weight": "read nowhere (training_args.py:48)",
    "normalize_intrinsic_projections": "read nowhere (training_args.py:43)",
    "intrinsic_layer_norms": "read nowhere (training_args.py:50)",
    "kronecker_prod": "an implementation choice of the same product (training_args.py:70)",
    "save_prefix_only": "what is saved, not what is trained (ATTEMPT run_seq2seq.py:506-509)",
    "compute_memory_usage": "logging only",
}
# protocol keys whose seed values are what peftlab always does; another value is refused
PROTOCOL = {
    "load_best_model_at_end": (True, "peftlab always tests the checkpoint best on validation"),
    "metric_for_best_model": ("average_metrics", "peftlab picks the best checkpoint by the tasks' mean metric"),
    "greater_is_better": (True, "peftlab's metrics are greater-is-better"),
    "predict_with_generate": (True, "peftlab evaluates text-to-text models by greedy generation"),
    "ignore_pad_token_for_loss": (True, "peftlab never trains on padding"),
    "do_eval": (True, "peftlab always evaluates on validation"),
    "do_test": (True, "peftlab always reports the test split"),
    "data_seed": (42, "the seeds' split permutation is seeded 42 (data/tasks.py:60-64)"),
    "dataloader_drop_last": (False, "peftlab keeps the last partial batch"),
}
SPLITS = {"split_validation_test", "max_val_samples", "max_test_samples", "eval_dataset_name", "test_dataset_name",
          "task_name", "pad_to_max_length", "val_max_target_length", "test_max_target_length", "max_target_length",
          "num_beams", "do_train", "tokenizer_name", "per_device_train_batch_size", "evaluation_strategy",
          "eval_strategy", "max_steps", "fp16", "bf16", "adam_beta1", "adam_beta2", "lr_scheduler_type",
          "eval_all_at_last", "adafactor", "sortish_sampler"}
KNOWN = set(COPIED) | set(NO_EFFECT) | set(PROTOCOL) | SPLITS | METHOD_KEYS


def code_base_of(data: dict, source: str) -> str:
    """ATTEMPT when a key only ATTEMPT has is present, or the path says so; else Compacter."""
    if any(key in data for key in ATTEMPT_ONLY) or "attempt" in source.lower().replace("\\", "/").split("/"):
        return "attempt"
    return "compacter"


def translate_seq2seq(data: dict, source: str, code_base: str | None = None, root: Path | None = None,
                      evaluate_only: bool = False) -> Translation:
    """`data` is the original JSON mapping; `root` the folder its relative paths are read from (the code
    base's working directory: compacter `seq2seq/`, ATTEMPT `attempt/`)."""
    code_base = code_base or code_base_of(data, source)
    keys = Keys(data, KNOWN, source)
    out = Translation(code_base, source)
    _copy(keys, out)
    _protocol(keys, out)
    _batch(keys, out, source)
    _schedule(keys, out, source)
    do_train = bool(keys.get("do_train", False)) and not evaluate_only
    out.set("do_train", do_train, "do_train" if "do_train" in keys else "do_train (absent: false)")
    tasks = _tasks(keys, out, source, do_train)
    if code_base == "attempt" and len(tasks) > 1:
        # ATTEMPT scores every task with task_name[0]'s metrics (run_seq2seq.py:403-404, 417-424;
        # eval_seq2seq.py:368-389): CB gets accuracy only in a SuperGLUE run led by BoolQ
        out.set("data.metrics_from", get_task(str(as_list(keys.get("task_name"))[0])).name,
                "task_name[0] (its metrics score every task)")
    method, extra = method_for(keys, out, code_base, tasks, do_train, root)
    out.set("method", method, "the method keys (see each field)")
    for dotted, (value, origin) in extra.items():
        out.set(dotted, value, origin)
    _data(keys, out, source, code_base)
    left = keys.left()
    if left:
        refuse(source, left[0], "read but not translated (a peftlab bug: please report)")
    return out


def _copy(keys: Keys, out: Translation) -> None:
    for key, dotted in COPIED.items():
        if keys.has(key):
            out.set(dotted, keys.take(key), key)
        keys.get(key)
    for key, reason in NO_EFFECT.items():
        if key in keys:
            keys.get(key)
            out.ignore(key, reason)
    if keys.get("max_steps", -1) > 0:
        out.set("train.max_steps", keys.take("max_steps"), "max_steps")
    model = keys.get("model_name_or_path")
    tokenizer = keys.get("tokenizer_name")
    if tokenizer and tokenizer != model:
        out.set("model.tokenizer", tokenizer, "tokenizer_name")
    elif tokenizer:
        out.ignore("tokenizer_name", "the model's own tokenizer")
    # run_seq2seq.py:343 (ATTEMPT :211): model.resize_token_embeddings(len(tokenizer)) — T5's 32,128 -> 32,100
    if str(model).split("/")[-1].startswith("t5"):
        out.set("model.resize_vocab", 32100, "run_seq2seq.py:343 resizes the vocabulary to len(tokenizer)")


def _protocol(keys: Keys, out: Translation) -> None:
    for key, (expected, why) in PROTOCOL.items():
        if key not in keys:
            continue
        value = keys.get(key)
        if value is not None and value != expected:
            refuse(out.source, f"{key}: {value!r}", f"{why}; only {expected!r} is reproduced")
        out.ignore(key, f"{why} (the value given)")
    for key in ("adafactor", "sortish_sampler"):
        if keys.get(key, False):
            refuse(out.source, key, "peftlab trains with AdamW and a random sampler, as the seeds do")
        if key in keys:
            out.ignore(key, "false: AdamW and a random sampler, as peftlab does")
    num_beams = keys.get("num_beams")
    if num_beams not in (None, 1):
        refuse(out.source, f"num_beams: {num_beams}", "peftlab evaluates by greedy generation")
    if "num_beams" in keys:
        out.ignore("num_beams", "greedy generation, as peftlab does")
    strategy = keys.get("evaluation_strategy") or keys.get("eval_strategy")
    if strategy is not None:
        if strategy not in ("epoch", "steps", "no"):
            refuse(out.source, f"evaluation_strategy: {strategy!r}", "expected epoch, steps or no")
        out.set("train.eval_strategy", strategy, "evaluation_strategy")


def _batch(keys: Keys, out: Translation, source: str) -> None:
    """peftlab's batch is global: the code's per-device batch × accumulation (one process, as the
    seeds' scripts run them: CUDA_VISIBLE_DEVICES=0)."""
    per_device = keys.get("per_device_train_batch_size", 8)
    accumulation = keys.get("gradient_accumulation_steps", 1)
    if not isinstance(per_device, int) or per_device < 1:
        refuse(source, "per_device_train_batch_size", f"expected a positive integer, got {per_device!r}")
    out.set("train.batch_size", per_device * accumulation,
            "per_device_train_batch_size × gradient_accumulation_steps (one GPU)")
    out.set("train.optimizer", "adamw_transformers", "the HF Trainer's transformers.AdamW (eps before the bias "
                                                      "correction, decay after the update)")
    betas = (keys.get("adam_beta1", 0.9), keys.get("adam_beta2", 0.999))
    if betas != (0.9, 0.999):
        out.set("train.adam_betas", list(betas), "adam_beta1, adam_beta2")
    if keys.get("fp16", False):
        out.set("train.precision", "fp16", "fp16")
    elif keys.get("bf16", False):
        out.set("train.precision", "bf16", "bf16")


def _schedule(keys: Keys, out: Translation, source: str) -> None:
    kind = keys.get("lr_scheduler_type", "linear")
    if kind not in ("linear", "constant_with_warmup", "constant"):
        refuse(source, f"lr_scheduler_type: {kind!r}", "peftlab reproduces linear and constant schedules")
    if kind != "linear":
        out.set("train.schedule", "constant", "lr_scheduler_type")
        if kind == "constant":
            out.set("train.warmup_steps", 0, "lr_scheduler_type: constant (no warmup)")


def _tasks(keys: Keys, out: Translation, source: str, do_train: bool) -> list[str]:
    train = [str(t) for t in as_list(keys.get("task_name"))]
    if not train:
        refuse(source, "task_name", "missing: name the task(s) to train, as run_seq2seq.py requires")
    evaluated = [str(t) for t in as_list(keys.get("eval_dataset_name"))] or train
    tested = [str(t) for t in as_list(keys.get("test_dataset_name"))] or evaluated
    tasks = train if do_train else evaluated
    try:
        names = [get_task(t).name for t in tasks]
    except PeftlabError as err:
        refuse(source, "task_name", str(err))
    out.set("tasks", names, "task_name" if do_train else "eval_dataset_name (an evaluation-only run)")
    # the source starts with the code's own task name (data/tasks.py:42-52), e.g. "superglue-boolq"
    prefixes = {name: original for name, original in zip(names, tasks) if name != original}
    if prefixes:
        out.set("data.prefixes", prefixes, "task_name (the code's task names start each source)")
    outside = [t for t in evaluated + tested if get_task(t).name not in names]
    if outside:
        refuse(source, "eval_dataset_name", f"{outside[0]} is not a task of the run ({tasks}); peftlab "
                                            "evaluates the tasks it trains")
    if do_train and len(names) > 1:
        # the Trainer evaluates only the first eval set during training, and keeps the checkpoint best
        # on it (ATTEMPT run_seq2seq.py:452-453; Compacter's trainer likewise)
        out.set("train.select_on", get_task(evaluated[0]).name, "eval_dataset_name[0] (picks the best checkpoint)")
    if set(map(str, tested)) != set(tasks):
        out.notes.append(f"test_dataset_name {tested}: peftlab reports the test split of every task of the run")
    return names


def _data(keys: Keys, out: Translation, source: str, code_base: str) -> None:
    out.set("data.text_compat", code_base, "data/tasks.py's text (MNLI 'hypothesis' without a colon, STS-B to 0.1"
                                           + (", WinoGrande's option1 twice)" if code_base == "attempt" else ")"))
    if keys.get("split_validation_test", False):
        out.set("data.splits", "seq2seq", "split_validation_test: true (data/tasks.py:95-118, seed 42)")
    else:
        out.set("data.splits", "official", "split_validation_test: false (the official validation set)")
    val, test = keys.get("max_val_samples"), keys.get("max_test_samples")
    if val is not None or test is not None:
        if val != test:
            refuse(source, "max_test_samples", f"{test} differs from max_val_samples {val}; peftlab caps "
                                               "validation and test alike (data.max_eval_samples)")
        out.set("data.max_eval_samples", val, "max_val_samples, max_test_samples")
    if keys.has("max_target_length"):
        out.set("model.max_target_length", keys.take("max_target_length"), "max_target_length")
    # generate() with max_length 20 (T5's decoder start included: 19 new tokens) during training; the
    # final evaluation and test at val/test_max_target_length (compacter run_seq2seq.py:541-556; ATTEMPT
    # passes none, so 20 again: seq2seq_trainer.py:22-32)
    out.set("model.eval_max_new_tokens", 19, "generate's max_length 20 during training (seq2seq_trainer.py:67-76)")
    final = keys.get("val_max_target_length", keys.get("max_target_length", 128)) if code_base == "compacter" else 20
    test = keys.get("test_max_target_length", final) if code_base == "compacter" else 20
    if test != final:
        refuse(source, "test_max_target_length", f"{test} differs from val_max_target_length {final}; peftlab "
                                                 "gives the final validation and test one budget")
    out.set("model.final_max_new_tokens", final - 1, "val_max_target_length, test_max_target_length (max_length, "
                                                     "the decoder start included)")
    for key in ("val_max_target_length", "test_max_target_length"):
        if key in keys and key not in keys.used:
            keys.get(key)
            out.ignore(key, "no effect in ATTEMPT: its evaluate() resets the budget to 20 (seq2seq_trainer.py:22-32)")
    if "pad_to_max_length" in keys:
        keys.get("pad_to_max_length")
        out.ignore("pad_to_max_length", "padding is masked everywhere except ATTEMPT's input pool, which "
                                        "compat='attempt' reproduces (docs/fidelity.md A1)")
    if "eval_all_at_last" in keys:
        keys.get("eval_all_at_last")
        out.ignore("eval_all_at_last", "re-scores saved checkpoints after training (ATTEMPT run_seq2seq.py:"
                                       "595-656); peftlab tests the best one")
