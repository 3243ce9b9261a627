"""kernel-adapters' command lines: `train.py --config X.json`, `evaluate.py X.json` (NLG, via kernel.py)
and `run_glue.py` with its flags (NLU: RoBERTa on GLUE, nlu/scripts/run_glue.py; TuneArguments
nlu/petl/options.py:45-254; [tf] = transformers 4.10.2)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import PeftlabError
from ..tasks import get_task
from .argv import flag_table, parse_args
from .base import Translation, refuse
from .kernel import translate_nlg_json
from .kernel_methods import CODE_BASE, REDIRECTION, TRAIN_PY, kernel_mix_config, with_compat

# --- command lines -----------------------------------------------------------------------------------

def translate_command(script: str, args: list[str], source: str, processes: int = 1,
                      base_dir: Path | None = None) -> Translation:
    """`train.py --config X.json`, `evaluate.py X.json [runs/... seed]` (X relative to `base_dir`, the code's
    working directory nlg/) or `run_glue.py --flags` (nlu/scripts/run_glue.py)."""
    name = Path(script).name
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    args = [a for a in args if not REDIRECTION.match(a)]      # `2>&1` is the shell's, not the script's
    if name == "run_glue.py":
        return nlu_translate(list(args), source, processes)
    if name == "train.py":
        flags = {k: ("flag" if v[0] == "bool" else v[0], v[1]) for k, v in TRAIN_PY.items()}
        values, given = parse_args(list(args), flags, source, "train.py")
        if "config" not in given:
            refuse(source, "--config", "required by train.py (train.py:268)")
        path = _config_path(values["config"], base, source)
        cli = {k: values[k] for k in given if k != "config"}
        return translate_nlg_json(_read(path, source), f"{source} ({path})", processes, flags=cli)
    if name == "evaluate.py":
        if not args or not args[0].endswith(".json"):
            refuse(source, "evaluate.py", "peftlab reads its JSON form: evaluate.py X.json (evaluate.py:199-200)")
        data = _read(_config_path(args[0], base, source), source)
        if len(args) > 1 and "runs/" in args[1]:      # evaluate.py:206-208
            if len(args) < 3 or not args[2].isdigit():
                refuse(source, args[1], "evaluate.py then reads a seed as the next argument (evaluate.py:208)")
            data.update(model_checkpoint=args[1], seed=int(args[2]))
        elif len(args) > 1:
            refuse(source, args[1], "evaluate.py reads it only as runs/<folder> <seed> (evaluate.py:206-208); "
                                    "peftlab translates `evaluate.py X.json`")
        return translate_nlg_json(data, f"{source} ({args[0]})", processes, evaluate_only=True)
    refuse(source, script, "not a kernel-adapters script (nlg/train.py, nlg/evaluate.py, nlu/scripts/run_glue.py)")


def _config_path(text: str, base: Path, source: str) -> Path:
    path = Path(text) if Path(text).is_absolute() else base / text
    if not path.is_file():
        refuse(source, text, f"file not found (looked in {base})")
    return path


def _read(path: Path, source: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PeftlabError(f"{source}: {path}: not valid JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        refuse(source, str(path), "expected a JSON object of config keys")
    return data


STRATEGY = ("no", "steps", "epoch")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "passive")
TUNE_CHOICES = {   # nlu/petl/options.py metadata choices (HfArgumentParser passes them to argparse)
    "attn_mode": ("prefix", "prefix_nomlp", "none", "bitfit", "lora", "adapter", "prompt_tuning", "kernel", "inducer"),
    "attn_option": ("none", "concat", "cross_attn", "cross_attn_noln", "cross_attn_relu", "parallel", "sequential",
                    "QVO", "Qlora"),
    "attn_composition": ("add", "gate_add"), "ffn_mode": ("adapter", "none", "lora"),
    "ffn_option": ("parallel", "sequential", "pfeiffer", "none"), "ffn_adapter_layernorm_option": ("in", "out", "none"),
    "ffn_adapter_init_option": ("bert", "lora"), "lora_init": ("bert", "lora", "Houlsby"),
    "evaluation_strategy": STRATEGY, "logging_strategy": STRATEGY, "save_strategy": STRATEGY,
    "lr_scheduler_type": SCHEDULERS, "fp16_backend": ("auto", "amp", "apex"), "log_level": LOG_LEVELS,
    "log_level_replica": LOG_LEVELS}
# run_glue.py:172-208 ModelArguments, :78-151 DataTrainingArguments; [tf] training_args.py:348-626;
# nlu/petl/options.py:45-254 TuneArguments (lora_alpha / lora_dropout redefined at 224-225: defaults 1.0 / 0.0)
GLUE_FLAGS = flag_table("""
model_name_or_path:str=! model_type:str=- config_name:str=- tokenizer_name:str=- cache_dir:str=-
use_fast_tokenizer:bool=True model_revision:str=main use_auth_token:bool=False
task_name:str=- dataset_name:str=- dataset_config_name:str=- max_seq_length:int=128 overwrite_cache:bool=False
pad_to_max_length:bool=True max_train_samples:int=- max_eval_samples:int=- max_predict_samples:int=-
train_file:str=- validation_file:str=- test_file:str=- max_tokens_per_batch:int=0
output_dir:str=! overwrite_output_dir:bool=False do_train:bool=False do_eval:bool=False do_predict:bool=False
evaluation_strategy:str=no prediction_loss_only:bool=False per_device_train_batch_size:int=8
per_device_eval_batch_size:int=8 per_gpu_train_batch_size:int=- per_gpu_eval_batch_size:int=-
gradient_accumulation_steps:int=1 eval_accumulation_steps:int=- learning_rate:float=5e-5 weight_decay:float=0.0
adam_beta1:float=0.9 adam_beta2:float=0.999 adam_epsilon:float=1e-8 max_grad_norm:float=1.0
num_train_epochs:float=3.0 max_steps:int=-1 lr_scheduler_type:str=linear warmup_ratio:float=0.0 warmup_steps:int=0
log_level:str=passive log_level_replica:str=passive log_on_each_node:bool=True logging_dir:str=-
logging_strategy:str=steps logging_first_step:bool=False logging_steps:int=500 save_strategy:str=steps
save_steps:int=500 save_total_limit:int=- save_on_each_node:bool=False no_cuda:bool=False seed:int=42
fp16:bool=False fp16_opt_level:str=O1 fp16_backend:str=auto fp16_full_eval:bool=False local_rank:int=-1
tpu_num_cores:int=- tpu_metrics_debug:bool=False debug:str='' dataloader_drop_last:bool=False eval_steps:int=-
dataloader_num_workers:int=0 past_index:int=-1 run_name:str=- disable_tqdm:bool!=- remove_unused_columns:bool=True
label_names:list=- load_best_model_at_end:bool=False metric_for_best_model:str=- greater_is_better:bool!=-
ignore_data_skip:bool=False sharded_ddp:str='' deepspeed:str=- label_smoothing_factor:float=0.0
adafactor:bool=False group_by_length:bool=False length_column_name:str=length report_to:list=-
ddp_find_unused_parameters:bool!=- dataloader_pin_memory:bool=True skip_memory_metrics:bool=True
use_legacy_prediction_loop:bool=False push_to_hub:bool=False resume_from_checkpoint:str=-
push_to_hub_model_id:str=- push_to_hub_organization:str=- push_to_hub_token:str=- mp_parameters:str=''
attn_mode:str=none attn_option:str=concat attn_composition:str=add ffn_mode:str=none ffn_option:str=none
ffn_adapter_layernorm_option:str=in ffn_adapter_init_option:str=bert ffn_adapter_scalar:str=1 mid_dim:int=800
attn_bn:int=200 ffn_bn:int=-1 prefix_dropout:float=0.0 unfreeze_params:str=ef_ load_path:str='' lora_alpha:float=1.0
lora_dropout:float=0.0 lora_init:str=Houlsby lora_Q_rank:int=4 lora_V_rank:int=4 lora_tanh:bool=False
lora_head:bool=False lora_head_base:str=XX lora_Q_share_rank:int=0 lora_V_share_rank:int=0 kerfit_variant_type:str=''
prefix_tuning:str=none prefix_dim:int=512 prefix_length:int=8 prefix_value_extension:bool=False
prefix_head_share:bool=False
""", TUNE_CHOICES)
GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")      # run_glue.py:65-75
GLUE_TRAIN_ROWS = {"cola": 8551, "mnli": 392702, "mrpc": 3668, "qnli": 104743, "qqp": 363846, "rte": 2490,
                   "sst2": 67349, "stsb": 5749, "wnli": 635}                              # HF glue train splits
HF_METRICS = {"matthews_correlation": "mcc", "spearmanr": "spearman", "accuracy": "accuracy", "f1": "f1",
              "pearson": "pearson"}
GLUE_NO_EFFECT = {
    "cache_dir": "download cache", "overwrite_cache": "datasets cache", "use_fast_tokenizer": "the same token ids",
    "use_auth_token": "hub access", "logging_steps": "logging", "logging_dir": "logging",
    "logging_strategy": "logging", "logging_first_step": "logging", "report_to": "logging", "run_name": "logging",
    "disable_tqdm": "display", "log_level": "logging", "log_level_replica": "logging", "log_on_each_node": "logging",
    "save_total_limit": "disk use (the best checkpoint is kept, [tf] trainer)", "save_on_each_node": "disk use",
    "no_cuda": "device choice", "local_rank": "set by the launcher (processes are given to the translation)",
    "tpu_num_cores": "TPU only", "tpu_metrics_debug": "TPU only", "debug": "debugging hooks",
    "dataloader_num_workers": "speed", "dataloader_pin_memory": "speed", "skip_memory_metrics": "logging",
    "use_legacy_prediction_loop": "the same predictions", "push_to_hub": "upload", "push_to_hub_model_id": "upload",
    "push_to_hub_organization": "upload", "push_to_hub_token": "upload", "mp_parameters": "SageMaker only",
    "ddp_find_unused_parameters": "DDP bookkeeping (run_glue.sh:285 abbreviates the flag)",
    "eval_accumulation_steps": "memory during evaluation", "ignore_data_skip": "resuming only",
    "max_tokens_per_batch": "copied onto training_args (run_glue.py:350) and read by nothing: the stock Trainer",
    "do_predict": "writes GLUE test predictions (run_glue.py:577-599); no effect on the results",
    "max_predict_samples": "selects the unlabelled test split (run_glue.py:484-489), which nothing evaluates",
    "length_column_name": "read only with group_by_length", "fp16_opt_level": "apex only; --fp16 is native AMP",
    "fp16_backend": "AMP or apex mixed precision: the same fp16 autocast", "sharded_ddp": "shards optimizer state only",
    "mid_dim": "the prefix MLP width (petl_factory.py:60-83): read only with --attn_mode prefix",
    "prefix_dropout": "read only with --attn_mode prefix (petl_factory.py)",
    "attn_composition": "'add' and 'gate_add' differ only for cross_attn prefixes (modeling_roberta.py:330-372)",
    "per_device_eval_batch_size": "evaluation batching only", "per_gpu_eval_batch_size": "evaluation batching only",
    "save_steps": "checkpoint cadence", "save_strategy": "checkpoint cadence"}

ATTN_REFUSED = {
    "prefix": "the code's prefix builds three prompt-MLP sets on PETLEncModel, 46,174,560 trainable values of "
              "which one set is used (petl_enc_model.py:28-29, petl_factory.py:66-83)",
    "prefix_nomlp": "the code's direct prefix (PrefixDirectInit, petl_factory.py) is not translated",
    "adapter": "its attention adapter drops its hidden units with p = 0.1 (modeling_roberta.py:212-217, "
               "petl_factory.py:443); peftlab's adapters have no dropout",
    "bitfit": "it trains every bias incl. the classifier's (petl_enc_model.py:55-57): not translated",
    "prompt_tuning": "not translated"}


def nlu_translate(args: list[str], source: str, processes: int = 1) -> Translation:
    """run_glue.py's flags -> the same peftlab run (nlu/scripts/run_glue.py, nlu/petl, nlu/models/roberta)."""
    values, given = parse_args(args, GLUE_FLAGS, source, "run_glue.py")
    v = values.__getitem__
    out = Translation(CODE_BASE, source)
    out.notes.append("kernel-adapters d22e53f nlu/scripts/run_glue.py: RoBERTa with the code's PETL modules, "
                     "HF Trainer (transformers 4.10.2)")
    task = _glue_task(v, out, given)
    _glue_training(v, out, given, processes, task)
    _glue_selection(v, out, given, task)
    method = with_compat(_glue_method(v, out, given), out)
    out.set("method", method, out.origin.get("method", "--attn_mode") + " --ffn_mode --unfreeze_params ef_ "
                              "(the classifier stays frozen: petl_enc_model.py:47-71)")
    named = " ".join([*out.origin.values(), *out.ignored])
    for key in sorted(given):
        if not re.search(rf"--{key}\b", named):
            if key not in GLUE_NO_EFFECT:
                refuse(source, f"--{key}", "read but not translated (a peftlab bug: please report)")
            out.ignore(f"--{key}", GLUE_NO_EFFECT[key])
    return out


def _glue_task(v, out: Translation, given: set) -> str:
    src = out.source
    if v("model_type") != "roberta_custom":
        refuse(src, f"--model_type {v('model_type')}", "only roberta_custom builds the PETL modules "
                                                       "(run_glue.py:361-376)")
    name = v("model_name_or_path")
    if v("config_name") not in (None, name) or v("tokenizer_name") not in (None, name) or v("model_revision") != "main":
        refuse(src, "--config_name/--tokenizer_name/--model_revision", "another config, tokenizer or revision than "
                                                                     "the model's: not translated")
    out.set("model.name", name, "--model_name_or_path (run_glue.py:363-370)")
    out.set("model.head", "classification", "--model_type roberta_custom: RobertaForSequenceClassification "
                                            "(run_glue.py:361-370)")
    limit = 512 if name.startswith("roberta") else v("max_seq_length")
    out.set("model.max_length", min(v("max_seq_length"), limit), "--max_seq_length, capped at the tokenizer's "
                                                                  "model_max_length (run_glue.py:431)")
    task = (v("task_name") or "").lower()
    if task not in GLUE_TASKS:
        refuse(src, f"--task_name {v('task_name')}", f"peftlab reads the GLUE tasks {', '.join(GLUE_TASKS)} "
                                                     f"(run_glue.py:65-75, 153-157)")
    for key in ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file"):
        if key in given:
            out.ignore(f"--{key}", "unused: --task_name loads GLUE (run_glue.py:274-277)")
    out.set("tasks", [task], "--task_name (load_dataset('glue', task), run_glue.py:277)")
    out.set("data.splits", "official", "train on train, evaluate on validation (run_glue.py:468-482)")
    if v("max_train_samples") is not None:
        out.set("data.max_train_samples", v("max_train_samples"), "--max_train_samples: the first rows "
                                                                   "(run_glue.py:475)")
    if v("max_eval_samples") is not None:
        out.set("data.max_eval_samples", v("max_eval_samples"), "--max_eval_samples: the first rows (run_glue.py:482)")
    if task == "mnli":
        out.set("data.report_mismatched", True, "run_glue.py also scores the whole validation_mismatched set "
                                                "at the end, as 'mnli-mm' (run_glue.py:558-565)")
    if v("pad_to_max_length"):
        # the inducer's share sees padded keys on RoBERTa (docs/fidelity.md K2): the padding must be the code's
        out.set("data.pad_to_max_length", True, f"--pad_to_max_length: every row padded to "
                                                f"{min(v('max_seq_length'), limit)} tokens (run_glue.py:396-397)")
    out.set("output_dir", v("output_dir"), "--output_dir")
    out.set("overwrite", bool(v("overwrite_output_dir")), "--overwrite_output_dir")
    return task


def _glue_training(v, out: Translation, given: set, processes: int, task: str) -> None:
    src = out.source
    out.set("do_train", bool(v("do_train")), "--do_train (run_glue.py:539-543)")
    for key, why in (("adafactor", "Adafactor instead of AdamW"), ("group_by_length", "length-grouped batches"),
                     ("dataloader_drop_last", "drops the last partial batch"), ("fp16_full_eval", "fp16 evaluation"),
                     ("prediction_loss_only", "no metrics, so no selection"), ("deepspeed", "DeepSpeed's own config"),
                     ("resume_from_checkpoint", "resumes a saved run"), ("label_names", "other label columns")):
        if v(key):
            refuse(src, f"--{key}", f"{why}: not translated")
    if v("past_index") != -1 or not v("remove_unused_columns"):
        refuse(src, "--past_index/--no_remove_unused_columns", "changes what the model is fed: not translated")
    per = v("per_gpu_train_batch_size") or v("per_device_train_batch_size")   # [tf] train_batch_size
    gas = v("gradient_accumulation_steps")
    out.set("train.batch_size", per * processes * gas, f"--per_device_train_batch_size x {processes} process(es) "
                                                       f"x --gradient_accumulation_steps")
    out.set("train.gradient_accumulation_steps", gas, "--gradient_accumulation_steps")
    out.set("train.eval_batch_size", (v("per_gpu_eval_batch_size") or v("per_device_eval_batch_size")) * processes,
            "--per_device_eval_batch_size")
    out.set("train.learning_rate", v("learning_rate"), "--learning_rate")
    out.set("train.epochs", float(v("num_train_epochs")), "--num_train_epochs")
    if v("max_steps") > 0:
        out.set("train.max_steps", v("max_steps"), "--max_steps")
    elif "max_steps" in given:
        out.ignore("--max_steps", f"{v('max_steps')}: training runs by epochs ([tf] max_steps <= 0)")
    out.set("train.weight_decay", v("weight_decay"), "--weight_decay ([tf] Trainer: not on biases, LayerNorms)")
    out.set("train.adam_betas", [v("adam_beta1"), v("adam_beta2")], "--adam_beta1 --adam_beta2")
    out.set("train.adam_epsilon", v("adam_epsilon"), "--adam_epsilon")
    out.set("train.max_grad_norm", v("max_grad_norm"), "--max_grad_norm")
    out.set("train.label_smoothing", v("label_smoothing_factor"), "--label_smoothing_factor")
    out.set("train.precision", "fp16" if v("fp16") else "fp32", "--fp16 (native AMP)")
    out.set("train.seed", v("seed"), "--seed (run_glue.py:261)")
    _glue_schedule(v, out, processes, task)
    out.set("train.optimizer", "adamw_transformers", "the HF Trainer's transformers.AdamW ([tf] trainer.py)")


def _glue_schedule(v, out: Translation, processes: int, task: str) -> None:
    """[tf] get_scheduler: polynomial = linear to lr_end 1e-7; warmup = warmup_steps or ceil(ratio * steps)."""
    kind = v("lr_scheduler_type")
    if kind.startswith("cosine"):
        refuse(out.source, f"--lr_scheduler_type {kind}", "peftlab has linear and constant schedules")
    schedule = {"linear": ("linear", 0.0), "polynomial": ("linear", 1e-7)}.get(kind, ("constant", 0.0))
    out.set("train.schedule", schedule[0], f"--lr_scheduler_type {kind}")
    out.set("train.lr_end", schedule[1], f"--lr_scheduler_type {kind} ([tf] optimization.py:172-174: lr_end 1e-7)")
    if kind == "constant":                  # [tf] get_scheduler: CONSTANT ignores the warmup
        out.set("train.warmup_steps", 0, "--lr_scheduler_type constant: no warmup")
        return
    if v("warmup_steps") > 0 or not v("warmup_ratio"):
        out.set("train.warmup_steps", v("warmup_steps"), "--warmup_steps")
        return
    rows = GLUE_TRAIN_ROWS[task] if v("max_train_samples") is None else v("max_train_samples")
    per = v("per_gpu_train_batch_size") or v("per_device_train_batch_size")
    per_epoch = max(math.ceil(math.ceil(rows / processes) / per) // v("gradient_accumulation_steps"), 1)
    total = v("max_steps") if v("max_steps") > 0 else math.ceil(v("num_train_epochs") * per_epoch)
    out.set("train.warmup_steps", math.ceil(total * v("warmup_ratio")),
            f"--warmup_steps 0 --warmup_ratio {v('warmup_ratio')}: ceil(ratio x {total} steps of {rows} rows) "
            f"([tf] Trainer.get_warmup_steps)")


def _glue_selection(v, out: Translation, given: set, task: str) -> None:
    """[tf] Trainer: evaluate per --evaluation_strategy, keep the best *saved* checkpoint by
    --metric_for_best_model when --load_best_model_at_end, then evaluate it (run_glue.py:557-576)."""
    src, strategy = out.source, v("evaluation_strategy")
    if not v("do_eval") and strategy == "no":
        out.notes.append("no --do_eval: run_glue.py reports no score ([tf] do_eval follows evaluation_strategy); "
                         "peftlab reports the final weights' validation scores")
    if not v("load_best_model_at_end") or strategy == "no":
        out.set("train.eval_strategy", "no", "--load_best_model_at_end off or --evaluation_strategy no: the final "
                                             "weights are evaluated (--do_eval)")
        for key in {"metric_for_best_model", "greater_is_better", "eval_steps"} & given:
            out.ignore(f"--{key}", "no checkpoint is selected")
        return
    eval_steps = v("eval_steps") or v("logging_steps")       # [tf] training_args.py __post_init__
    if strategy != v("save_strategy") or (strategy == "steps" and v("save_steps") % eval_steps):
        refuse(src, "--save_strategy/--save_steps", "must match the evaluation's for --load_best_model_at_end "
                                                    "([tf] training_args.py __post_init__ raises)")
    metric = (v("metric_for_best_model") or "loss").removeprefix("eval_")
    ours = get_task(task).metrics
    if HF_METRICS.get(metric) != ours[0] or len(ours) != 1 or v("greater_is_better") is False:
        refuse(src, f"--metric_for_best_model {metric}", f"peftlab selects on the mean of {task}'s {', '.join(ours)} "
                                                          f"(greater is better)")
    out.set("train.eval_strategy", strategy, "--evaluation_strategy --load_best_model_at_end --do_eval")
    if strategy == "steps":          # only saved evaluations are candidates: evaluate at the save steps
        out.set("train.eval_steps", v("save_steps"), "--save_steps (--eval_steps divides it)")
    elif "eval_steps" in given:
        out.ignore("--eval_steps", "read only with --evaluation_strategy steps")
    out.set("train.select_on", task, "--metric_for_best_model --greater_is_better")
    out.set("train.evaluate_last_step", False, "the Trainer evaluates the last step only when it is an "
                                               "evaluation step ([tf] trainer.py)")


def _glue_method(v, out: Translation, given: set) -> dict:
    """PETLEncModel trains the `ef_` modules only: the classifier stays at its random init
    (nlu/petl/petl_enc_model.py:47-71, modeling_roberta.py:1466, 1742-1758)."""
    src, attn, ffn = out.source, v("attn_mode"), v("ffn_mode")
    if v("unfreeze_params") != "ef_":
        refuse(src, f"--unfreeze_params {v('unfreeze_params')}", "peftlab translates 'ef_' (the PETL modules only)")
    if v("load_path"):
        refuse(src, "--load_path", "loads a saved PETLEncModel (run_glue.py:436-446): not translated")
    if v("lora_tanh"):
        refuse(src, "--lora_tanh", "tanh(BA) updates have no peftlab counterpart")
    if attn == "inducer":
        method = _glue_inducer(v, out, given)
    elif attn == "kernel":
        if v("attn_option") != "QVO":
            refuse(src, f"--attn_option {v('attn_option')}", "kernel-mix is built only with QVO "
                                                             "(modeling_roberta.py:533)")
        names = ("lora_head", "lora_head_base", "kerfit_variant_type", "lora_alpha", "lora_Q_share_rank",
                 "lora_V_share_rank", "lora_Q_rank", "lora_V_rank", "lora_dropout", "lora_init")
        method = kernel_mix_config({k: v(k) for k in names}, src, "QVO", flag="--")
        out.origin["method"] = ("--attn_mode kernel --attn_option QVO --lora_head --lora_head_base --lora_Q_rank "
                                "--lora_V_rank --lora_Q_share_rank --lora_V_share_rank --lora_alpha --lora_dropout "
                                "--lora_init --kerfit_variant_type")
    elif attn in ("none", "lora"):
        method = None
        if attn == "lora":
            out.notes.append("--attn_mode lora: the attention LoRA is built, then replaced by plain nn.Linear "
                             "(modeling_roberta.py:177-188): only the FFN LoRA trains, as here")
    else:
        refuse(src, f"--attn_mode {attn}", ATTN_REFUSED.get(attn, "not translated") + "; peftlab translates "
                                                                                    "inducer, kernel, lora, none")
    if ffn == "adapter":
        refuse(src, "--ffn_mode adapter", "its adapter drops its hidden units with p = hidden_dropout_prob 0.1 "
               "(modeling_roberta.py:673-680, petl_factory.py:443); peftlab's have no dropout")
    if ffn == "lora":
        if method is not None:
            refuse(src, "--ffn_mode lora", f"beside --attn_mode {attn}: no peftlab combination")
        method = _glue_lora(v, out, "ffn_bn", ("ffn.in", "ffn.out"), "intermediate.dense, output.dense "
                                                                      "(modeling_roberta.py:597-599, 617-619)")
        out.origin["method"] = "--ffn_mode lora --ffn_bn --lora_alpha --lora_dropout --lora_init --attn_mode"
    if method is None:
        refuse(src, f"--attn_mode {attn} --ffn_mode {ffn}", "trains nothing (no ef_ module)")
    method["train_head"] = False
    _glue_unused(v, out, given, attn, ffn)
    if v("weight_decay") > 0 and method["method"].startswith("inducer"):     # [tf] Trainer: no decay on *bias*
        out.set("train.param_groups", [{"pattern": r"\.(key|value)_[ab]$", "weight_decay": 0.0}],
                "the inducer MLPs' A_bias/B_bias take no weight decay ([tf] Trainer.create_optimizer)")
    return method


def _glue_lora(v, out: Translation, rank: str, slots: tuple, where: str) -> dict:
    """loralib-style Linear (petl_factory.py:522-597): ef_lora_A kaiming, ef_lora_B zero ('lora' init), no
    bias, scaling alpha/r always (:547), dropout on the input (:594)."""
    if v("lora_init") != "lora":
        why = ("A and B stay zero: the LoRA never trains (petl_factory.py:545-563)" if v("lora_init") == "Houlsby"
               else "N(0, 0.02²) A and B (petl_factory.py:557-559); peftlab's LoRA starts B at zero")
        refuse(out.source, f"--lora_init {v('lora_init')}", why)
    if v(rank) <= 0:
        refuse(out.source, f"--{rank} {v(rank)}", "a LoRA of rank <= 0 is no LoRA")
    return {"method": "lora", "r": v(rank), "alpha": float(v("lora_alpha")), "dropout": v("lora_dropout"),
            "slots": list(slots), "bias": False}


def _glue_inducer(v, out: Translation, given: set) -> dict:
    """--attn_mode inducer: PrefixAdapter (modeling_roberta.py:222-223, 405-450; petl_factory.py:849-985);
    --attn_option Qlora adds a LoRA on self.query (modeling_roberta.py:182-185)."""
    src = out.source
    if v("prefix_tuning") != "landmark":
        refuse(src, f"--prefix_tuning {v('prefix_tuning')}", "the inducer's MLPs are built only for 'landmark' "
                                                             "(petl_factory.py:859-875)")
    if not v("prefix_value_extension"):
        refuse(src, "--prefix_value_extension", "false: no inducer module is built and the forward fails "
                                                "(modeling_roberta.py:222-223, 446-450)")
    if v("prefix_length") < 2:
        refuse(src, f"--prefix_length {v('prefix_length')}", "below 2 the key MLP is not built and the forward "
               "raises AttributeError (petl_factory.py:872-875, 889-890)")
    if v("prefix_head_share"):
        refuse(src, "--prefix_head_share", "one value basis shared by the heads: no peftlab counterpart")
    lora = None
    if "Qlora" in v("attn_option"):
        lora = _glue_lora(v, out, "attn_bn", ("attn.q",), "self.query")
    method = {"method": "inducer_lora" if lora else "inducer", "rank_k": v("prefix_length"), "rank_v": v("prefix_dim"),
              "prefix_value_extension": True, "joint_softmax": False, "share_dropout": True,   # :419-423
              "lora": lora, "parallel_adapter": None}
    out.origin["method"] = ("--attn_mode inducer --prefix_tuning landmark --prefix_length --prefix_dim "
                            "--prefix_value_extension --attn_option" + (" --attn_bn --lora_alpha --lora_dropout "
                                                                        "--lora_init" if lora else ""))
    return method


def _glue_unused(v, out: Translation, given: set, attn: str, ffn: str) -> None:
    named = " ".join(out.origin.values())
    reasons = {"attn_bn": "read only by LoRA (lora, inducer Qlora), prefix and adapter modes",
               "ffn_bn": "read only with --ffn_mode adapter / lora",
               **{k: "read only by a LoRA" for k in ("lora_alpha", "lora_dropout", "lora_init")},
               "attn_option": "read only with --attn_mode inducer / kernel / adapter / prefix",
               "ffn_option": "read only with --ffn_mode adapter", "ffn_adapter_layernorm_option": "read only with "
               "--ffn_mode adapter", "ffn_adapter_init_option": "read only with --ffn_mode adapter",
               "ffn_adapter_scalar": "read only with --ffn_mode adapter", "load_path": "'' (no saved model)",
               "lora_tanh": "false",
               **{k: "read only with --attn_mode kernel (petl_factory.py:618-681)" for k in
                  ("lora_head", "lora_head_base", "lora_Q_rank", "lora_V_rank", "lora_Q_share_rank",
                   "lora_V_share_rank", "kerfit_variant_type")},
               **{k: "read only with --attn_mode inducer (modeling_roberta.py:206-223)" for k in
                  ("prefix_tuning", "prefix_length", "prefix_dim", "prefix_value_extension", "prefix_head_share")}}
    for key in sorted(given & set(reasons)):
        if not re.search(rf"--{key}\b", named):
            out.ignore(f"--{key}", reasons[key])
