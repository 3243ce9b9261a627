"""kernel-adapters (ychen-stat-ml/kernel-adapters d22e53f): its NLG JSON configs and its `train.py`,
`evaluate.py` and `run_glue.py` command lines, translated into the same peftlab experiment.

NLG (GPT-2 on WebNLG): `train.py --config X.json` copies the JSON keys its argparse knows over its flags
(nlg/train.py:301-307) and reads the same JSON into AdapterTrainingArguments (nlg/training_args.py:7-111,
train.py:311-312); `evaluate.py X.json` reads it into TestingArguments + AdapterTrainingArguments
(nlg/evaluate.py:122-200). NLU (RoBERTa on GLUE): `run_glue.py` parses its flags with transformers 4.10.2's
HfArgumentParser over ModelArguments and DataTrainingArguments (nlu/scripts/run_glue.py:78-208),
TrainingArguments ([tf] training_args.py:348-626) and TuneArguments (nlu/petl/options.py:45-254), read
here from a typed table of every flag. Paths cited are the code base's (nlg/..., nlu/...); [tf] is
transformers 4.10.2. Analysis: docs/methods_kernel.md, docs/fidelity.md K1-K5.
"""
from __future__ import annotations

import re

from .base import Keys, Translation, refuse
from .kernel_methods import ADDED_TOKENS, CODE_BASE, GPT2_VOCAB, NLG_TYPES, TRAIN_ONLY, TRAIN_PY, nlg_method, option_value

GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
NO_EFFECT = {
    "config": "names the run folder the code writes (train.py:548-559)", "dataset_cache": "tokenization cache",
    "dataset_path": "overwritten from task (evaluate.py:214)", "device": "device choice",
    "local_rank": "set by the distributed launcher (processes are given to the translation)",
    "max_history": "CoQA dialogue history only (train.py:184)", "personality_permutations": "read nowhere",
    "random_init": "read nowhere (train.py:295)", "distillation": "only renames the run folder (train.py:550-551)",
    "adapter_config_name": "'adapter' is the only AdapterConfig (adapter_configuration.py:86-87)",
    "hidden_dim": "read nowhere (adapter_configuration.py:21)",
    "init_prefix_from_vocab": "read only by prefix_tuning 'reparameterization' (custom_gpt2.py:158), not translated",
    "top_k": "greedy decoding: argmax after filtering is the argmax (evaluate.py:103-107)",
    "top_p": "greedy decoding: top-p filtering keeps the argmax (evaluate.py:64-71, 107)",
    "temperature": "greedy decoding: argmax is unchanged by the temperature (evaluate.py:103, 107)"}
def translate_nlg_json(data: dict, source: str, processes: int = 1, evaluate_only: bool = False,
                       flags: dict | None = None) -> Translation:
    """nlg/configs/*.json as `train.py --config` (train, then test as evaluate.py does) or, with
    `evaluate_only`, as `evaluate.py X.json`; `flags`: train.py command-line values the JSON overrides."""
    data = {**(flags or {}), **data} if not evaluate_only else dict(data)
    keys = Keys(data, set(NLG_TYPES), source)
    for key, value in data.items():
        _check_type(key, value, NLG_TYPES[key][0], source)
    out = Translation(CODE_BASE, source)
    script = "evaluate.py" if evaluate_only else "train.py"
    out.notes.append(f"kernel-adapters d22e53f nlg/{script}: GPT-2 with the code's own adapters; peftlab runs "
                     f"{'no training, then' if evaluate_only else 'train.py, then'} evaluate.py's test decoding")
    task = _nlg_task(keys, out, evaluate_only)
    stem = (re.findall(r"([^/\\\s()]+)\.json", source) or ["config"])[-1]
    run_dir = f"runs/{stem}_{task}_{option_value(keys, 'lr')}_epoch{option_value(keys, 'n_epochs')}"    # utils.py:165-170
    _nlg_model(keys, out)
    if evaluate_only:
        _nlg_evaluate_only(keys, out, run_dir, f"results/{task}/{stem}", source)     # evaluate.py:245
    else:
        _nlg_training(keys, out, processes, run_dir)
    _nlg_generation(keys, out, evaluate_only)
    nlg_method(keys, out, evaluate_only)
    for key, reason in NO_EFFECT.items():
        if key in keys:
            keys.get(key)
            out.ignore(key, reason)
    left = keys.left()
    if left:
        refuse(source, left[0], "read but not translated (a peftlab bug: please report)")
    return out


def _check_type(key: str, value, kind: str, source: str) -> None:
    """JSON values reach the code uncoerced (train.py:304-306, [tf] parse_json_file): a wrong type breaks it."""
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str),
          "list": isinstance(value, list)}[kind]
    if value is not None and not ok:
        names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list"}
        refuse(source, key, f"expected {names[kind]}, got {value!r}")


def _nlg_task(keys: Keys, out: Translation, evaluate_only: bool) -> str:
    task = option_value(keys, "task", evaluate_only)
    where = "evaluate.py:131" if evaluate_only else "train.py:272"
    if task in ("qa", "summarization"):
        refuse(out.source, f"task {task}", "peftlab has no CoQA / CNN-DailyMail task; it runs webnlg")
    if task != "webnlg":
        refuse(out.source, f"task {task}", "the code asserts one of qa, summarization, webnlg (train.py:67, 317)")
    out.set("tasks", ["webnlg"], f"task ({where}; data/WebNLG/{{train,dev,test}}.json, train.py:76-78)")
    out.set("data.splits", "official", "train.json trains, dev.json validates, test.json is decoded (utils.py:35-44)")
    out.set("data.text_compat", "kernel-adapters", "WebNLG as the code builds it: the 16 special tokens, "
            "<bos_webnlg> <subject> s <property> p <object> o ... <target_webnlg> text <eos_webnlg>, token types = "
            "the segment markers (train.py:56-65, 131-153), loss on the text and <eos_webnlg> only; decoding stops "
            "at any of the six webnlg tokens (evaluate.py:77, 105-106)")
    out.notes.append("the code scores its test output with the WebNLG challenge's script (BLEU, METEOR, TER; "
                     "evaluate.py:310-313, shipped in data.zip); peftlab scores BLEU with sacrebleu")
    return task


def _nlg_model(keys: Keys, out: Translation) -> None:
    name = option_value(keys, "model_name")
    if name not in GPT2_MODELS:
        refuse(out.source, f"model_name {name}", "the code builds its own GPT-2 (custom_gpt2.py); peftlab knows the "
                                                 f"hub GPT-2 sizes {', '.join(GPT2_MODELS)}")
    out.set("model.name", name, "model_name (train.py:274, 348-370)")
    out.set("model.head", "causal", "GPT2LMHeadModel (train.py:367)")
    out.set("model.resize_vocab", GPT2_VOCAB + ADDED_TOKENS, "add_special_tokens_: <pad> + 15 task tokens "
                                                             "(train.py:61-65, 106-113, 377)")
    # WebNLG is never truncated (train.py:98-103, 131-153): 512 + 512 tokens keep every example whole
    out.set("model.max_length", 512, "no truncation in the code (train.py:98-103)")
    out.notes.append("the 16 new embedding rows start N(0, 0.02²) in the code (custom_modeling_utils.py:710-715)")


def _nlg_training(keys: Keys, out: Translation, processes: int, run_dir: str) -> None:
    src = out.source
    if not keys.has("seed"):
        refuse(src, "seed", "train.py asserts it is set (train.py:318)")
    out.set("train.seed", keys.take("seed"), "seed (train.py:322)")
    out.notes.append("train.py writes a new seed (np.random.randint(1120)) and model_checkpoint back into the JSON "
                     "(train.py:323, 555-559): a second run of the original file uses another seed")
    gas = option_value(keys, "gradient_accumulation_steps")
    if gas != 1:
        refuse(src, f"gradient_accumulation_steps {gas}", "the ignite schedule steps per iteration, not per update, "
               "and clipping runs on every partial sum (train.py:431-436, 510); peftlab translates 1 (train.py's "
               "default is 8)")
    per = option_value(keys, "train_batch_size")
    out.set("train.batch_size", per * processes, f"train_batch_size x {processes} process(es) (train.py:246)")
    out.set("train.eval_batch_size", option_value(keys, "valid_batch_size") * processes, "valid_batch_size (train.py:247)")
    out.set("train.learning_rate", option_value(keys, "lr"), "lr (train.py:396, 500-506)")
    out.set("train.epochs", float(option_value(keys, "n_epochs")), "n_epochs (train.py:595)")
    # ignite: 500 warmup iterations, then the linear decay over n_epochs*len(loader) counted after it
    out.set("train.warmup_steps", 500, "create_lr_scheduler_with_warmup(warmup_duration=500) (train.py:503-506)")
    out.set("train.schedule", "linear_from_warmup", "PiecewiseLinear lr -> 0 after the warmup (train.py:500-510)")
    out.set("train.lr_end", 0.0, "PiecewiseLinear to 0.0 (train.py:500)")
    out.set("train.weight_decay", 0.0, "transformers.AdamW default (train.py:396)")
    out.set("train.adam_betas", [0.9, 0.999], "transformers.AdamW defaults (train.py:396)")
    out.set("train.adam_epsilon", 1e-6, "transformers.AdamW default eps (train.py:396)")
    out.set("train.optimizer", "adamw_transformers", "transformers.AdamW (train.py:396)")
    out.set("train.max_grad_norm", option_value(keys, "max_norm"), "max_norm (train.py:283, 434)")
    out.set("train.label_smoothing", option_value(keys, "label_smooth"), "label_smooth (custom_gpt2.py:1539-1543)")
    out.set("train.precision", "fp32", "no fp16 in train.py")
    out.set("train.eval_strategy", "epoch", "validation every epoch (train.py:488)")
    out.set("train.early_stopping_patience", option_value(keys, "patience"), "patience (train.py:535-538)")
    metric = option_value(keys, "early_stop_metric")
    if metric != "average_ppl":
        refuse(src, f"early_stop_metric {metric}", "only average_ppl exists (train.py:514-532)")
    out.set("output_dir", run_dir, "train.py's run folder without time and host (utils.py:165-170, train.py:548-549)")
    out.set("train.select_metric", "loss", "the checkpoint of lowest dev perplexity (train.py:522-538, 576-599)")


def _nlg_evaluate_only(keys: Keys, out: Translation, run_dir: str, results: str, source: str) -> None:
    out.set("do_train", False, "evaluate.py trains nothing")
    checkpoint = option_value(keys, "model_checkpoint", True)
    model = option_value(keys, "model_name")
    if checkpoint == "":        # train.py rewrites it to its run folder (train.py:555-559)
        out.set("init_from", f"{run_dir}/adapter/default", "model_checkpoint '': the folder train.py writes back "
                                                           "(train.py:555-559), peftlab's run of the same JSON")
    elif checkpoint != model:
        refuse(source, f"model_checkpoint {checkpoint}", "a kernel-adapters run folder (its own GPT-2 "
               "pytorch_model.bin); peftlab evaluates its own run: translate `train.py --config` first")
    else:
        out.notes.append(f"model_checkpoint {checkpoint}: the pretrained model with fresh adapters "
                         f"(evaluate.py:225-240)")
    keys.get("seed")
    out.ignore("seed", "evaluate.py's decoding is greedy: the seed only names the output file (evaluate.py:296)")
    out.set("output_dir", results, "results/<task>/<config name>/ (evaluate.py:245)")
    for key in TRAIN_ONLY:
        if key in keys:
            keys.get(key)
            out.ignore(key, "not read by evaluate.py (TestingArguments + AdapterTrainingArguments, evaluate.py:197-200)"
                       if key in TRAIN_PY else "freezing only: evaluate.py trains nothing")


def _nlg_generation(keys: Keys, out: Translation, evaluate_only: bool) -> None:
    if not evaluate_only and "model_checkpoint" in keys:
        keys.get("model_checkpoint")
        out.ignore("model_checkpoint", "read by evaluate.py only; train.py rewrites it (train.py:555-559)")
    if not keys.get("no_sample", True):
        refuse(out.source, "no_sample false", "samples the outputs (evaluate.py:107); peftlab decodes greedily")
    if keys.get("min_length", 0) > 0:
        refuse(out.source, "min_length", "resamples early special tokens (evaluate.py:108-113); peftlab has no minimum")
    budget = keys.get("max_length", 40)
    out.set("model.max_target_length", 512, "training targets untruncated (train.py:131-153)")
    out.set("model.eval_max_new_tokens", budget, "max_length: evaluate.py's new tokens (evaluate.py:84-116, 150)")
    out.set("model.final_max_new_tokens", budget, "max_length (evaluate.py:150)")
