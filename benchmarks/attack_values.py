"""The runner-config attack's values: per field of the run schema, values known to be valid and values
known to be invalid (wrong types, negatives, zero rates, NaN, huge sizes, unknown choices, ...).

A value may be a token that the case builder resolves for the architecture and the case's folder:
`@task`, `@head`, `@model`, `@data`, `@fresh` (a new run folder), `@foreign` (a user's non-empty folder),
`@file` (a regular file), `@cwd` (the current folder, absolute), `@missing` (a path that is not there),
`@truncated` / `@small_vocab` / `@no_config` / `@empty` (broken copies of the model folder).
`EITHER` lists values where accepting and refusing are both right (they are run, and a traceback or a
hang still counts, but neither outcome is judged).
"""
from __future__ import annotations

NAN, INF = float("nan"), float("inf")
WRONG_HEAD = {"bert": ["seq2seq", "causal"], "t5": ["causal"], "gpt2": ["seq2seq"]}
ARCH_TASK = {"bert": "sst2", "t5": "rte", "gpt2": "e2e_nlg"}
ARCH_HEAD = {"bert": "classification", "t5": "seq2seq", "gpt2": "causal"}

# field: (valid values, invalid values)
MODEL = {
    "name": (["@model"], ["@missing", "@truncated", "@small_vocab", "@no_config", "@empty", "@file", "", 5]),
    "head": (["auto", "@head"], ["@wrong_head", "encoder", 3, None]),
    "tokenizer": ([None, "@model"], ["@missing", "@small_vocab", 7]),
    "max_length": ([8, 24, 64], [0, -1, "24", 2.5, None, True]),
    "max_target_length": ([4, 8], [0, -3, "4", NAN]),
    "resize_vocab": ([None, 300], [0, -1, 100, 10**12, "300"]),
    "dropout": ([None, 0.0, 0.1], [-0.1, 1.0, 1.5, NAN, INF, "x"]),
    "train_new_embeddings": ([False], [True, "yes", 1]),
    "eval_max_new_tokens": ([None, 4], [0, -1, 2.5]),
    "final_max_new_tokens": ([None, 4], [0, -1, "4"]),
}
DATA = {
    "dir": (["@data"], ["@missing", "@file", "", 3]),
    "splits": (["official", "seq2seq"], ["xyz", 1, None]),
    "max_train_samples": ([None, 8, 10**9], [0, -1, "8", 1.5]),
    "max_eval_samples": ([None, 6], [0, -5, NAN]),
    "sampling": (["proportional", "temperature"], ["uniform", 0]),
    "temperature": ([1.0, 2.0], [0, -1, NAN, INF, "hot"]),
    "mixing": (["mixed"], ["random", None]),
    "task_prefix": ([True, False], ["yes", 1, None]),
    "prefixes": ([{}, {"@task": "tsk"}], [{"cola": "x"}, {"no_such_task": "x"}, "x", [1]]),
    "text_compat": ([None, "compacter", "attempt"], ["kernel", 1]),
    "pad_to_max_length": ([True, False], ["no", 0]),
    "metrics_from": ([None, "@task"], ["no_such_task", 5]),
}
TRAIN = {
    "epochs": ([1, 0.5], [-1, NAN, INF, "one"]),
    "max_steps": ([1, 2], [0, -1, "2", 1.5, 10**18]),
    "batch_size": ([4, 8, 16, 1000], [0, -1, "8", 2.5, None]),
    "eval_batch_size": ([4, 16], [0, -2, None]),
    "gradient_accumulation_steps": ([1, 2, 4], [0, -1, 3, "2"]),
    "learning_rate": ([1e-3, 0.1], [0, -0.01, NAN, INF, "fast", None]),
    "weight_decay": ([0.0, 0.01], [-1, NAN, "x"]),
    "warmup_steps": ([0, 1, 100], [-1, "1", 1.5]),
    "warmup_ratio": ([0.0, 0.1], [-0.1, 1.0, 2, NAN]),
    "max_grad_norm": ([None, 1.0, 1e-6], [0, -1, NAN, "1"]),
    "label_smoothing": ([0.0, 0.1], [-0.1, 1.0, NAN]),
    "precision": (["fp32", "bf16", "fp16"], ["fp8", 16, None]),
    "adam_betas": ([[0.9, 0.999], [0.8, 0.99]], [[1.0, 0.9], [0.9], [-0.1, 0.9], "x", [0.9, 0.999, 0.5], [NAN, 0.9]]),
    "adam_epsilon": ([1e-8, 1e-6], [0, -1e-8, NAN]),
    "schedule": (["linear", "constant", "linear_from_warmup"], ["cosine_with_typo", 1]),
    "lr_end": ([0.0, 1e-4], [-1, 1.0, NAN]),
    "optimizer": (["adamw", "adamw_transformers"], ["sgd", None]),
    "scheduler_step_first": ([True, False], ["x"]),
    "fractional_warmup": ([True, False], [2]),
    "eval_offset": ([0, 1], ["x", 1.5]),
    "evaluate_last_step": ([True, False], ["no"]),
    "seed": ([0, 7, 2**31], [-1, "x", 1.5, 2**64, None]),
    "eval_strategy": (["epoch", "steps", "no"], ["sometimes", False, None]),
    "eval_steps": ([1, 2], [0, -1, "2"]),
    "log_steps": ([1, 5], [0, -1]),
    "early_stopping_patience": ([None, 1, 3], [0, -1, "3"]),
    "select_on": ([None, "@task"], ["cola", "no_such_task", 3]),
    "select_metric": (["metric", "loss"], ["accuracy", None]),
    "param_groups": ([[], [{"pattern": "adapter", "learning_rate": 1e-3}], [{"pattern": ".", "weight_decay": 0.1}]],
                     [[{"pattern": "(", "learning_rate": 1e-3}], [{"pattern": "x", "learning_rate": -1}],
                      [{"patern": "x"}], "x", [1], [{"pattern": "x", "learning_rate": NAN}],
                      [{"pattern": "x", "weight_decay": -0.5}]]),
    "tensorboard": ([False, True], ["x"]),
    "progress_bar": ([False, True], [3]),
    "threads": ([None, 1], [0, -1, "2"]),
    "keep_freed_memory": ([True, False], ["y"]),
    "keep_last": ([1, 2], [0, -1]),
}
TOP = {
    "tasks": ([["@task"], "@task"], [[], ["no_such_task"], ["@task", "@task"], 5, [5]]),
    "do_train": ([True, False], ["x", None]),
    "method": ([{"method": "houlsby", "reduction_factor": 4}, {"method": "lora", "r": 2}, {"method": "ia3"},
                {"method": "bitfit"}, {"method": "pfeiffer", "reduction_factor": 2},
                {"method": "compacter", "reduction_factor": 4, "phm_dim": 2}],
               [{"method": "nope"}, {"method": "houlsby", "reduction_factor": 0}, {"method": "houlsby", "scaling": 0},
                {"method": "lora", "alpha": 0}, {"method": "houlsby", "drop_max_layers": 100},
                {"method": "phm_adapter", "phm_init_range": 1e12}, {"method": "houlsby", "bottleneck_size": 10**11},
                {"method": "lora", "r": -2}, {"method": "lora", "r": 10**12}, {"reduction_factor": 4}, "houlsby",
                {"method": "houlsby", "reduction_factr": 4}, {"method": "lora", "slots": ["no.such.slot"]},
                {"method": "houlsby", "layers": [99]}, {"method": "lora", "dropout": 1.5}]),
    "adapters": (["shared"], ["per_task", "many"]),
    "init_from": ([None], ["@missing", "@empty", "@file"]),
    "output_dir": (["@fresh"], ["", ".", "./", "@foreign", "@file", "@cwd", "@data"]),
    "overwrite": ([False, True], ["yes", 1]),
    "description": (["", "a run"], [5, ["x"]]),
}
SECTIONS = {"model": MODEL, "data": DATA, "train": TRAIN, "": TOP}
# unknown keys, at every level
UNKNOWN = ["trian", "model.nme", "train.learnig_rate", "data.dirr", "method.reduction_factr", "train.param_groups.x"]

# whole-file attacks on the config text (each invalid)
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
              'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
              'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n'
              'h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n')
FILE_ATTACKS = ["duplicate_key", "alias_bomb", "python_name", "python_apply", "list_top", "empty", "bad_syntax",
                "missing", "is_dir", "fifo", "not_utf8", "json_garbage", "nan_json", "override_no_equals",
                "override_section_scalar", "model_tiny", "tab_indent", "huge_int_json", "deep_nesting"]
DATA_ATTACKS = ["missing_train", "empty_train", "fifo_train", "not_utf8", "bad_label", "train_is_dir",
                "missing_column", "short_row", "data_dir_file"]
# the prior-run attacks of finding 1: a user's run folder that must survive an invalid start
RUN_ATTACKS = ["run_without_checkpoints", "run_overwrite_bad_config", "run_resume_changed_config",
               "run_resume_nothing", "run_symlinked_last"]
