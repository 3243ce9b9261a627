"""ATTEMPT's attention keys (AkariAsai/ATTEMPT b5121e5, `attempt/options.py`, `run_seq2seq.py:160-215`,
`eval_seq2seq.py`), translated into one `attempt` method config.

Training (`do_train: true`): the sources are `prompt_embedding_path`, the target starts from the first
(the last with `multi_task`), G from `attn_path_sub` and the frozen LayerNorm from `layer_norm_dir` when
asked. Evaluation only (`do_train` absent): `eval_seq2seq.py` reads G and each task's target prompt
from `output_dir` (`attn_W_{down,up}.pt`, `prefix_embeddings_{task}.pt`) and ignores `attn_path_sub`
and `layer_norm_dir`.
"""
from __future__ import annotations

from pathlib import Path

from .base import Keys, Translation, as_list, refuse, resolve

REFUSED_WHEN_ON = {
    "fix_attention": "a frozen G (utils.py:118-121) is not built",
    "ignore_target": "a mixture without the target (modeling_t5.py:907) is not built",
    "learned_temperature": "a learned temperature is not built (reported not to train in the code)",
}


def attempt_method(keys: Keys, out: Translation, tasks: list[str], do_train: bool, root: Path | None):
    method = keys.get("attn_method", "linear")
    if method != "sub":
        refuse(out.source, f"attn_method: {method!r}", "peftlab builds ATTEMPT's 'sub' attention (the "
                                                       "paper's); the code's other variants are not built")
    for key, why in REFUSED_WHEN_ON.items():
        if keys.get(key, False):
            refuse(out.source, key, why)
    if keys.get("lang_name") is not None:
        refuse(out.source, "lang_name", "crashes in the code (tasks.py:103-104: load_dataset gets lang_code)")
    sources = [resolve(p, root) for p in as_list(keys.get("prompt_embedding_path"))]
    if not (keys.get("load_prefix_embeddings", False) and sources):
        refuse(out.source, "load_prefix_embeddings", "ATTEMPT without loaded source prompts mixes zero "
                                                     "prompts (modeling_t5.py:1726-1729); give prompt_embedding_path")
    multi_task, shared = keys.get("multi_task", False), keys.get("shared_attn", False)
    if multi_task and shared and do_train:
        refuse(out.source, "multi_task", "with shared_attn, training crashes in the code (modeling_t5.py:1075-1085)")
    config = {"method": "attempt", "sources": sources, "length": keys.get("prefix_dim", 100),
              "temperature": keys.get("temperature", 2000)}
    # run_seq2seq.py:177-193: the target starts from the first source, or the last one when not
    # training or with multi_task
    config["target_init"] = 0 if do_train and not multi_task else len(sources) - 1
    if shared or (not do_train and len(tasks) > 1):
        config["tasks"] = list(tasks)      # one target per task (shared_attn; eval_seq2seq reads one per task)
    extra = _starting_files(keys, out, config, tasks, do_train, root)
    _ignored(keys, out, do_train)
    return config, extra


def _starting_files(keys: Keys, out: Translation, config: dict, tasks: list[str], do_train: bool,
                    root: Path | None) -> dict:
    extra = {}
    if not do_train:
        folder = Path(resolve(keys.get("output_dir", "."), root))
        config["attn_init"] = [str(folder / "attn_W_down.pt"), str(folder / "attn_W_up.pt")]
        # eval_seq2seq.py names each file by the config's own task name (prefix_embeddings_superglue-cb.pt)
        named = [str(t) for t in as_list(keys.get("eval_dataset_name") or keys.get("task_name"))]
        config["target_files"] = [str(folder / f"prefix_embeddings_{task}.pt") for task in named]
        out.notes.append("evaluation only, as eval_seq2seq.py: G and each task's target prompt are read from "
                         "output_dir")

        for key in ("attn_path_sub", "layer_norm_dir", "load_attention", "load_layer_norm"):
            if key in keys:
                keys.get(key)
                out.ignore(key, "eval_seq2seq.py never reads it")
        return extra
    if keys.get("load_attention", False) and keys.has("attn_path_sub"):
        paths = as_list(keys.take("attn_path_sub"))
        if len(paths) != 2:
            refuse(out.source, "attn_path_sub", f"names W_down and W_up (2 files), got {len(paths)}")
        config["attn_init"] = [resolve(p, root) for p in paths]
    if keys.get("load_layer_norm", False) and keys.has("layer_norm_dir"):
        folder = as_list(keys.take("layer_norm_dir"))
        config["layer_norm_init"] = resolve(folder[0], root)
    for key in ("attn_path_sub", "layer_norm_dir", "load_attention", "load_layer_norm"):
        if key in keys and key not in keys.used:
            keys.get(key)
            out.ignore(key, "read only together with its partner key (load_attention / load_layer_norm)")
    if keys.has("attn_learning_rate"):
        # run_seq2seq.py:431 compares parameter names without '.weight': G keeps the prompt's rate; what the
        # key does change is the optimizer: transformers' AdamW with eps 1e-6 (docs/fidelity.md A5)
        extra["train.adam_epsilon"] = (1e-6, "attn_learning_rate (its optimizer's eps; the rate itself never "
                                             "applies, run_seq2seq.py:431)")
        keys.get("attn_learning_rate")
    return extra


def _ignored(keys: Keys, out: Translation, do_train: bool) -> None:
    reasons = {
        "prefix_num": "the sources' initial shape only; the loaded prompts replace it (modeling_t5.py:1726-1729)",
        "attn_path": "sets an attribute nothing reads (modeling_t5.py:1777-1778)",
        "target_prompt_embedding_path": "read only by SPoT's cosine weighting, not by ATTEMPT (run_seq2seq.py:199)",
        "attn_prefix": "read nowhere (options.py:100)", "attn_method_name": "read nowhere (options.py:107)",
        "init_prefix_from_vocab": "the target starts from a source prompt instead",
        "prefix_tuning": "the prompt is ATTEMPT's", "multi_task": "only which source starts the target",
        "shared_attn": "one target per task", "attn_learning_rate": "never applied (run_seq2seq.py:431)",
        "load_prefix_embeddings": "the sources", "prompt_embedding_path": "the sources",
        "attn_method": "'sub'", "temperature": "the method's temperature", "prefix_dim": "the prompt length",
    }
    for key, reason in reasons.items():
        if key in keys and key not in keys.used:
            keys.get(key)
            out.ignore(key, reason)
