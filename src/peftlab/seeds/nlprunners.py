"""nlprunners' adapter command lines (zphang/nlprunners 37edf66, packaging/adapters.md), translated.

`nlpr/proj/adapters/runscript.py` trains one Houlsby adapter (size 64, gelu, every LayerNorm and the head
trained) -> peftlab `houlsby`; `runscript_multi_adapter.py` mixes saved single adapters (`model.p` files
named by `--adapter_weights_path`) -> peftlab `weighted_sum` with `compat: nlprunners`. Flags are parsed
as zconf/argparse parse them (zutils bda4309 zconf/core.py:179-238): `--flag value`, `--flag=value`, a
unique prefix of a flag, and `--ZZsrc` JSON files whose keys are prepended as flags. Citations: RS =
runscript.py, RSM = runscript_multi_adapter.py, MA = multi_adapter_modeling.py (nlpr/proj/adapters/),
MS = nlpr/shared/model_setup.py, TS = nlpr/shared/train_setup.py, MR = nlpr/shared/metarunner.py.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import closest
from ..errors import PeftlabError
from ..files import read_json
from ..released import adapter_weights_paths, houlsby_config
from ..tasks import get_task
from .argv import resolve_flag
from .base import Translation, refuse

REQUIRED = object()
# flag -> (type, default, RS line, RSM line); type "flag" is store_true, "any" an untyped zconf.attr (str)
FLAGS = {
    "task_config_path": ("str", REQUIRED, 23, 23), "output_dir": ("str", REQUIRED, 24, 24),
    "model_type": ("str", REQUIRED, 27, 27), "model_path": ("str", REQUIRED, 28, 28),
    "model_config_path": ("str", None, 29, 29), "model_tokenizer_path": ("str", None, 30, 30),
    "model_load_mode": ("str", "safe", 31, 31), "model_save_mode": ("str", "all", 32, 32),
    "max_seq_length": ("int", 128, 33, 33), "do_train": ("flag", False, 37, 37),
    "do_val": ("flag", False, 38, 38), "do_test": ("flag", False, 39, 39), "do_save": ("flag", False, 40, 40),
    "do_save_full": ("flag", False, 41, None), "eval_every_steps": ("int", 0, 42, 41),
    "save_every_steps": ("int", 0, 43, 42), "partial_eval_number": ("int", 1000, 44, 43),
    "train_batch_size": ("int", 8, 45, 44), "eval_batch_size": ("int", 8, 46, 45),
    "force_overwrite": ("flag", False, 47, 46), "seed": ("int", -1, 48, 47),
    "train_examples_number": ("int", None, 49, 48), "train_examples_fraction": ("float", None, 50, 49),
    "learning_rate": ("float", 1e-5, 53, 52), "num_train_epochs": ("int", 3, 54, 53),
    "max_steps": ("int", -1, 55, 54), "adam_epsilon": ("float", 1e-8, 56, 55),
    "max_grad_norm": ("float", 1.0, 57, 56), "warmup_steps": ("int", None, 58, 57),
    "warmup_proportion": ("float", 0.1, 59, 58), "optimizer_type": ("str", "adam", 60, 59),
    "gradient_accumulation_steps": ("int", 1, 63, 62), "no_cuda": ("flag", False, 64, 63),
    "fp16": ("flag", False, 65, 64), "fp16_opt_level": ("str", "O1", 66, 65), "local_rank": ("int", -1, 67, 66),
    "server_ip": ("str", "", 68, 67), "server_port": ("str", "", 69, 68),
    "adapter_weights_path": ("str", REQUIRED, None, 71), "adapter_exclude": ("str", "", None, 72),
    "adapter_num_weight_sets": ("int", 1, None, 73), "adapter_ft_mode": ("str", "weights", None, 74),
    "adapter_use_optimized": ("int", 0, None, 75), "adapter_include_base": ("any", None, None, 76),
    "adapter_include_flex": ("any", None, None, 77),
}
SCRIPTS = {"runscript.py": ("runscript.py", 2), "runscript_multi_adapter.py": ("runscript_multi_adapter.py", 3)}
# official GLUE dev rows (nlpr_data "val" = the GLUE dev file, preproc_glue_data.py:9-111)
DEV_ROWS = {"cola": 1043, "mnli": 9815, "mrpc": 408, "qnli": 5463, "qqp": 40430, "rte": 277, "sst2": 872,
            "stsb": 1500, "wnli": 71}
LAYERS = {"roberta-base": 12, "roberta-large": 24}
NO_EFFECT = {
    "do_val": "peftlab always scores the final (best-restored) weights on the dev set",
    "do_test": "writes test_preds.csv for the unlabelled GLUE test file; no effect on training",
    "do_save": "writes model.p; no effect on training", "do_save_full": "writes full_model.p; no effect on training",
    "save_every_steps": "writes model__<step>.p (MR:106-112); no effect on training",
    "eval_batch_size": "evaluation batch size; no effect on results",
    "force_overwrite": "only skips a DONE check that these scripts never write (initialization.py:84-87)",
    "model_save_mode": "never read by the script", "no_cuda": "device choice",
    "local_rank": "set by the distributed launcher (processes are given to the translation)",
    "server_ip": "remote debugger", "server_port": "remote debugger",
    "model_config_path": "export_model.py:43-46 writes the hub model's config; num_labels comes from the task "
                         "(MS:56-74); peftlab reads the same config from model.name",
    "model_tokenizer_path": "export_model.py:47-48 saves the hub tokenizer; peftlab loads it from model.name",
    "adapter_include_base": "overwritten from --adapter_ft_mode in _post_init (RSM:79-93)",
    "adapter_include_flex": "overwritten from --adapter_ft_mode in _post_init (RSM:79-93)",
    "adam_epsilon": "never passed to the optimizer (RS:117-125, RSM:164-172): eps stays 1e-8 (MS:248)",
}


def translate_command(script: str, args: list[str], source: str, processes: int = 1) -> Translation:
    """One runscript.py / runscript_multi_adapter.py command line -> the same peftlab run config."""
    name = Path(script).name
    parent = Path(script).parent.name
    if name not in SCRIPTS or (name == "runscript.py" and parent not in ("", "adapters")):
        refuse(source, script, "not an nlprunners adapter script (nlpr/proj/adapters/runscript.py or "
                               "runscript_multi_adapter.py)")
    multi = name == "runscript_multi_adapter.py"
    flags = {k: v for k, v in FLAGS.items() if v[SCRIPTS[name][1]] is not None}
    out = Translation("nlprunners", source)
    values, given = _parse(list(args), flags, source, name, out)
    out.notes.append(f"nlprunners 37edf66 nlpr/proj/adapters/{name}; the base model is the hub model named "
                     f"by model_type, which export_model.py exports (nlpr/preproc/export_model.py:42-45)")
    task = _model_and_task(out, values, given, multi)
    _training(out, values, given, processes, multi)
    _evaluation(out, values, given, task)
    (_multi_method if multi else _single_method)(out, values, given)
    for flag in given:
        if flag in NO_EFFECT and f"--{flag}" not in out.ignored:
            out.ignore(f"--{flag}", NO_EFFECT[flag])
    return out


# --- parsing -------------------------------------------------------------------------------------

def _parse(args: list[str], flags: dict, source: str, script: str, out: Translation) -> tuple[dict, set]:
    """Flags as argparse reads them, --ZZsrc JSON keys prepended (zconf core.py:179-238); typed values."""
    raw, zz_src, overrides = _tokens(args, list(flags) + ["ZZsrc", "ZZoverrides"], flags, source)
    if overrides and not zz_src:
        refuse(source, "--ZZoverrides", "needs --ZZsrc (zconf core.py:225 asserts it)")
    for path in zz_src:
        for key, value in _zz_values(path, source, out).items():
            if key not in flags:
                refuse(source, f"--ZZsrc {path}", f"key '{key}' is no flag of {script}{closest(key, flags)}")
            if key in raw and key not in overrides:
                refuse(source, f"--{key}", f"also set by --ZZsrc {path}: zconf raises 'Attempting to override' "
                                           f"(core.py:213-214) unless --ZZoverrides names it")
            if key not in raw:
                raw[key] = (True if value else None) if flags[key][0] == "flag" else str(value)
    values, given = {}, set()
    for flag, (kind, default, *lines) in flags.items():
        if flag in raw and raw[flag] is not None:
            line = lines[SCRIPTS[script][1] - 2]
            values[flag], given = _typed(flag, kind, raw[flag], source, f"{script}:{line}"), given | {flag}
        elif default is REQUIRED:
            refuse(source, f"--{flag}", f"required by {script} (argparse exits without it)")
        else:
            values[flag] = default
    return values, given


def _tokens(args, names, flags, source) -> tuple[dict, list, list]:
    raw, zz_src, overrides, i = {}, [], [], 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            refuse(source, token, "unrecognized argument (the scripts take only --flags)")
        key, eq, inline = token[2:].partition("=")
        flag = resolve_flag(key, names, source)
        kind = flags[flag][0] if flag in flags else "str"
        if kind == "flag":
            if eq:
                refuse(source, f"--{flag}", "takes no value (a store_true switch)")
            raw[flag], i = True, i + 1
            continue
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(args) and not args[i].startswith("--") and (not values or flag == "ZZoverrides"):
            values.append(args[i])
            i += 1
        if not values:
            refuse(source, f"--{flag}", f"expected {'one or more values' if flag == 'ZZoverrides' else 'a value'}")
        if flag == "ZZsrc":
            zz_src.append(values[0])
        elif flag == "ZZoverrides":
            overrides = values
        else:
            raw[flag] = values[0]       # argparse: the last occurrence wins
    return raw, zz_src, overrides


def _typed(flag, kind, value, source, where):
    if kind in ("str", "any", "flag"):
        return value
    try:
        return int(value) if kind == "int" else float(value)
    except ValueError:
        refuse(source, f"--{flag}", f"expected {'an int' if kind == 'int' else 'a float'} ({where}), got {value!r}")


def _zz_values(path: str, source: str, out: Translation) -> dict:
    """A --ZZsrc JSON's keys; when the file is not here, the four keys export_model.py writes beside it
    (export_model.py:49-55), model_type from its folder's name (packaging/simple_setup.md:64-66)."""
    if os.path.isfile(path):
        data = read_json(path)
        if not isinstance(data, dict):
            refuse(source, f"--ZZsrc {path}", "expected a JSON object of flags")
        out.notes.append(f"--ZZsrc {path}: its keys ({', '.join(data)}) are prepended as flags (core.py:191-223)")
        return data
    folder = Path(path).parent
    model_type = folder.name
    out.notes.append(f"--ZZsrc {path} is not here: taken as export_model.py's config.json of {model_type!r} "
                     f"(export_model.py:49-55), its folder named by model_type (simple_setup.md:64-66)")
    return {"model_type": model_type, "model_path": str(folder / "model" / f"{model_type}.p"),
            "model_config_path": str(folder / "model" / f"{model_type}.json"),
            "model_tokenizer_path": str(folder / "tokenizer")}


# --- model, task, training -------------------------------------------------------------------------

def _model_and_task(out: Translation, v: dict, given: set, multi: bool):
    model_type = v["model_type"]
    if not model_type.startswith("roberta"):
        why = ("nlprunners also trains bert.pooler (nlpr/proj/adapters/model_setup.py:19-31), which peftlab keeps "
               "frozen" if model_type.startswith("bert") else "only BERT/RoBERTa get adapters (modeling.py:112-134)")
        refuse(out.source, f"--model_type {model_type}", why)
    out.set("model.name", model_type, "--model_type")
    if Path(v["model_path"]).name != f"{model_type}.p":
        refuse(out.source, f"--model_path {v['model_path']}", f"not export_model.py's export of {model_type} "
               f"(<base>/model/{model_type}.p, export_model.py:42-45); peftlab starts from the hub weights")
    out.ignore("--model_path", f"export_model.py:42-45 saves the hub's pretrained {model_type}; peftlab loads it "
                               f"by name (the task head starts fresh either way, MS:73)")
    mode = v["model_load_mode"]
    if multi and mode != "safe":
        refuse(out.source, f"--model_load_mode {mode}", "only 'safe' loads the pretrained encoder here "
               "(MS:158-195: strict and base_weights fail on the MLM checkpoint, no_load keeps random weights)")
    if "model_load_mode" in given:
        out.ignore("--model_load_mode", "never read by runscript.py" if not multi else "safe: the checkpoint's "
                   "matching tensors are loaded (MS:142-155), as peftlab loads the pretrained model")
    out.set("model.max_length", v["max_seq_length"], "--max_seq_length")
    stem = Path(v["task_config_path"]).stem
    try:
        task = get_task(stem).name
    except PeftlabError as err:
        refuse(out.source, f"--task_config_path {v['task_config_path']}", str(err))
    out.set("tasks", [task], "--task_config_path (the task config's file stem, preproc_glue_data.py:173-176)")
    # TS:56-84, MR:156-180: train on the whole train file, select and report on the dev file
    out.set("data.splits", "official", "--task_config_path (train.jsonl / val.jsonl)")
    out.notes.append(f"data.dir must point at the GLUE data ({task}): the task config JSON names nlprunners' "
                     f"jsonl export of the same GLUE files (preproc_glue_data.py:153-176); not read here")
    out.set("output_dir", v["output_dir"], "--output_dir")
    return task


def _training(out: Translation, v: dict, given: set, processes: int, multi: bool) -> None:
    src = out.source
    if not v["do_train"]:
        if multi:
            refuse(src, "--do_train", "absent: runscript_multi_adapter.py then does nothing (RSM:201-238 nest "
                                      "saving and evaluation under do_train)")
        out.set("do_train", False, "--do_train absent (RS:156)")
    if v["gradient_accumulation_steps"] != 1:
        refuse(src, "--gradient_accumulation_steps", "other than 1 never steps the optimizer at 37edf66 "
               "(nlpr/shared/runner.py:278 tests epoch_step, which is never incremented)")
    if v["warmup_steps"] is not None:
        refuse(src, "--warmup_steps", "raises RuntimeError: warmup_proportion is always set too (MS:324-325)")
    if v["optimizer_type"] != "adam":
        refuse(src, f"--optimizer_type {v['optimizer_type']}", "peftlab trains with AdamW only (MS:293-306)")
    _subsample(out, v, given)
    if v["train_batch_size"] < 1 or v["num_train_epochs"] < 1 and (v["max_steps"] or 0) <= 0:
        refuse(src, "--train_batch_size/--num_train_epochs", "must be positive to train")
    out.set("train.batch_size", v["train_batch_size"] * processes,
            f"--train_batch_size x {processes} device(s) (per GPU, TS:23)")
    out.set("train.learning_rate", v["learning_rate"], "--learning_rate")
    out.set("train.epochs", float(v["num_train_epochs"]), "--num_train_epochs (TS:30, MR:97-98)")
    if (v["max_steps"] or 0) > 0:
        out.set("train.max_steps", v["max_steps"], "--max_steps (TS:26-28, MR:116-127)")
    if not 0 <= v["warmup_proportion"] < 1:
        refuse(src, "--warmup_proportion", f"{v['warmup_proportion']} is not in [0, 1)")
    out.set("train.warmup_ratio", v["warmup_proportion"], "--warmup_proportion (MS:326-327)")
    out.set("train.schedule", "linear", "get_linear_schedule_with_warmup (MS:312-313)")
    out.set("train.lr_end", 0.0, "linear decay to 0 (MS:312-313)")
    out.set("train.weight_decay", 0.01, "MS:275-279")
    out.set("train.adam_betas", [0.9, 0.999], "transformers.AdamW defaults (MS:296-298)")
    out.set("train.adam_epsilon", 1e-8, "optimizer_epsilon=1e-8 (MS:248, 297)")
    if v["max_grad_norm"] <= 0:
        refuse(src, "--max_grad_norm", f"{v['max_grad_norm']} would zero every gradient (nlpr/shared/runner.py:271)")
    out.set("train.max_grad_norm", v["max_grad_norm"], "--max_grad_norm (nlpr/shared/runner.py:271)")
    _precision(out, v, given)
    if v["seed"] == -1:
        out.notes.append("--seed -1 (the default) draws a random seed (initialization.py:102-106); peftlab uses "
                         "train.seed (42 unless set): pass --seed to pin both")
    else:
        out.set("train.seed", v["seed"], "--seed (initialization.py:69-81)")
    out.set("train.optimizer", "adamw_transformers", "transformers.AdamW: decay after the update (MS:296-298)")
    out.set("train.scheduler_step_first", True, "scheduler.step() before optimizer.step() (MS:217-220)")
    out.set("train.fractional_warmup", True, "warmup over the float warmup_proportion * t_total (MS:326-327)")
    if not multi:
        out.set("train.clip_frozen_gradients", True, "the base's gradients are computed (requires_grad stays on), "
                "never zeroed, and clipped with the rest (nlpr/shared/runner.py:271, 280)")


def _subsample(out: Translation, v: dict, given: set) -> None:
    number, fraction = v["train_examples_number"], v["train_examples_fraction"]
    if fraction == 1.0:               # TS:57-58: a fraction of 1 is no subsampling
        out.ignore("--train_examples_fraction", "1.0 means the whole training set (TS:57-58)")
        fraction = None
    if number is not None or fraction is not None:
        flag = "--train_examples_number" if number is not None else "--train_examples_fraction"
        refuse(out.source, flag, "nlprunners draws a random subset (TS:56-84); peftlab's data.max_train_samples "
                                 "keeps the first rows")


def _precision(out: Translation, v: dict, given: set) -> None:
    level = v["fp16_opt_level"]
    if not v["fp16"]:
        out.set("train.precision", "fp32", "--fp16 absent")
        if "fp16_opt_level" in given:
            out.ignore("--fp16_opt_level", "read only with --fp16 (MS:334-345)")
        return
    if level not in ("O0", "O1"):
        refuse(out.source, f"--fp16_opt_level {level}", "apex O2/O3 cast the model's weights to fp16; peftlab's "
                                                        "fp16 is mixed precision over fp32 weights (apex O1)")
    out.set("train.precision", "fp16" if level == "O1" else "fp32", f"--fp16 --fp16_opt_level {level} (apex amp)")


def _evaluation(out: Translation, v: dict, given: set, task: str) -> None:
    every, number = v["eval_every_steps"], v["partial_eval_number"]
    if not v["do_train"]:
        for flag in {"eval_every_steps", "partial_eval_number"} & given:
            out.ignore(f"--{flag}", "read only while training (RS:156-169)")
        return
    if every < 0:
        refuse(out.source, "--eval_every_steps", f"{every} must be >= 0")
    if every == 0:           # MR:134-143: one evaluation at the end, so the final weights are kept
        out.set("train.eval_strategy", "no", "--eval_every_steps 0: only the end-of-training eval (MR:134-135)")
        out.ignore("--partial_eval_number", "with --eval_every_steps 0 the only candidate is the final model")
        return
    out.set("train.eval_strategy", "steps", "--eval_every_steps (MR:42-46, 113-114)")
    out.set("train.eval_steps", every, "--eval_every_steps")
    # (global_step+1) % every == 0 (MR:42-46): after update every-1, 2*every-1, ... (and at the end in both)
    out.set("train.eval_offset", 1, "(global_step+1) % --eval_every_steps (MR:42-46)")
    rows = DEV_ROWS.get(task)
    if rows is None or number < rows:
        refuse(out.source, f"--partial_eval_number {number}", f"selects on the first {number} dev rows but reports "
               f"on all (RS:161, do_val) of {task} ({rows or 'unknown'} rows); peftlab selects and reports on the "
               f"same rows")
    out.ignore("--partial_eval_number", f"{number} >= the {rows} dev rows of {task}: every row (RS:161)")


# --- methods ---------------------------------------------------------------------------------------

def _single_method(out: Translation, v: dict, given: set) -> None:
    """runscript.py: nlpr/proj/adapters/modeling.py:112-134 (placement), :9-11 (size 64, gelu, N(0, 2e-4)),
    :153-158 (every LayerNorm trains), model_setup.py:43-72 (the head trains)."""
    out.set("method", houlsby_config(), "AdapterConfig() defaults (RS:96; modeling.py:9-11, 25-51, 112-158)")
    # MS:250-255: adapter weights, biases and LayerNorms take no weight decay; the head's weights do
    out.set("train.param_groups", [{"pattern": r"\.net\.(down|up)\.weight$", "weight_decay": 0.0}],
            "no decay for adapter.{down,up}_project.weight (MS:250-255)")
    out.notes.append("runscript.py trains adapters, the 25 LayerNorms and the head: 3,009,794 updated values on "
                     "roberta-base with 2 labels (the listed pooler gets no gradient)")
    out.set("train.listed_twice", ["classifier.dense."], "classifier.dense is listed twice in the optimizer "
                                                         "(model_setup.py:51-54): AdamW updates it twice per step")


FT_MODES = {"base": (True, False), "flex": (False, True), "base_ft": (True, False), "full_ft": (True, False)}


def _multi_method(out: Translation, v: dict, given: set) -> None:
    """runscript_multi_adapter.py -> weighted_sum (multi_adapter_modeling.py 37edf66)."""
    src, mode = out.source, v["adapter_ft_mode"]
    if mode not in FT_MODES:
        refuse(src, f"--adapter_ft_mode {mode}", f"raises KeyError in _post_init (RSM:79-93); one of "
                                                 f"{', '.join(FT_MODES)}{closest(mode, FT_MODES)}")
    if mode == "full_ft":
        refuse(src, "--adapter_ft_mode full_ft", "also trains the sources' adapters and LayerNorms (MA:777-778); "
                                                 "peftlab's weighted_sum keeps the sources it loads frozen")
    if v["adapter_use_optimized"] == 0:
        refuse(src, "--adapter_use_optimized 0", "the unoptimised path replaces the base branch by a fresh adapter "
               "and LayerNorm (MA:107-119) and normalises flex again (MA:78-80); peftlab builds the optimised path")
    sources = _sources(out, v)
    sets = v["adapter_num_weight_sets"]
    layers = LAYERS.get(v["model_type"])
    if sets != -1 and (sets < 1 or (layers and layers % sets)):
        refuse(src, f"--adapter_num_weight_sets {sets}", f"must be -1 or divide the {layers or 'model'}'s layers "
                                                          f"(MA:543-545 asserts it)")
    include_base, flex = FT_MODES[mode]
    method = {"method": "weighted_sum", "adapters": list(sources), "mode": "softmax",   # RSM:126-134, MA:497
              "num_weight_sets": sets, "include_base": include_base, "flex": flex, "flex_size": 64,
              "train_mode": mode, "head_from": None, "sources": sources, "compat": "nlprunners"}
    out.set("method", method, "--adapter_weights_path, --adapter_ft_mode, --adapter_num_weight_sets, "
                              "--adapter_use_optimized 1 (RSM:119-134)")
    # MS:268-289: the mixing weights always train at lr 0.01 without weight decay
    out.set("train.param_groups", [{"pattern": r"(^|\.)weight_sets\.weights$", "learning_rate": 0.01,
                                    "weight_decay": 0.0}], "weighted_sum.weights: lr 0.01, no decay (MS:268-289)")
    out.notes.append("the task head starts fresh (MA:745-749: the sources' heads and poolers are dropped); "
                     "method.sources are runscript.py model.p files, read by peftlab.released")


def _sources(out: Translation, v: dict) -> dict:
    """adapter_weights.json (name -> model.p), read only when it is here; --adapter_exclude applied."""
    path = v["adapter_weights_path"]
    if not os.path.isfile(path):
        refuse(out.source, f"--adapter_weights_path {path}", "file not found (the JSON names the single "
                                                              "adapters' model.p files, MA:718-725)")
    sources = adapter_weights_paths(path)
    names = v["adapter_exclude"].split(",")        # RSM:120
    if "" in names:
        out.notes.append("--adapter_exclude '' (its default): at 37edf66 `del adapter_weights_dict['']` raises "
                         "KeyError (RSM:72, 120; MA:728-730), so the original crashes; translated as the run "
                         "before that flag (8bc57dd): no source excluded")
    for name in (n for n in names if n):
        if name not in sources:
            refuse(out.source, f"--adapter_exclude {name}", f"not a name of {path} (KeyError, MA:728-730)"
                                                             f"{closest(name, sources)}")
        del sources[name]
    if not sources:
        refuse(out.source, "--adapter_exclude", "excludes every source: nothing is left to mix")
    return sources
