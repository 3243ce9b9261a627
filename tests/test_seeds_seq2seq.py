"""Compacter's and ATTEMPT's run_seq2seq.py JSON, key by key (src/peftlab/seeds/seq2seq.py)."""
from __future__ import annotations

import json

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.seeds import translate_mapping
from peftlab.tasks import get_task
from peftlab.tasks.base import Example, seq2seq_splits
from peftlab.train.schema import RunConfig, load_run_config

COMPACTER = {
    "model_name_or_path": "t5-base", "tokenizer_name": "t5-base", "learning_rate": 3e-3, "output_dir": "out/c",
    "max_source_length": 128, "per_device_train_batch_size": 100, "per_device_eval_batch_size": 100,
    "num_train_epochs": 20, "warmup_steps": 500, "task_name": ["rte"], "eval_dataset_name": ["rte"],
    "test_dataset_name": ["rte"], "dataset_config_name": ["en"], "split_validation_test": True,
    "train_task_adapters": True, "task_reduction_factor": 32, "hypercomplex_adapters": True,
    "hypercomplex_division": 4, "factorized_phm": True, "shared_phm_rule": True, "unfreeze_layer_norms": True,
    "non_linearity": "gelu_new", "predict_with_generate": True, "do_train": True, "evaluation_strategy": "epoch",
    "add_layer_norm_before_adapter": False, "add_layer_norm_after_adapter": False,
}
ATTEMPT = {
    "model_name_or_path": "t5-base", "learning_rate": 0.3, "task_name": ["superglue-cb", "superglue-wic"],
    "attn_prefix_tuning": True, "prefix_tuning": True, "prefix_dim": 100, "attn_learning_rate": 0.1,
    "prompt_embedding_path": ["src/mnli.pt", "src/qnli.pt"], "load_prefix_embeddings": True,
    "save_prefix_only": True, "temperature": 2087, "attn_method": "sub", "shared_attn": True, "do_train": True,
    "per_device_train_batch_size": 32, "split_validation_test": True,
}


def config_of(seed: dict) -> RunConfig:
    return RunConfig.from_dict(translate_mapping(seed, "seed.json").config)


def test_a_compacter_file_is_the_same_experiment():
    config = config_of(COMPACTER)
    method = config.method_config()
    assert config.method["method"] == "compacter" and method.compat == "compacter"
    assert (method.phm_dim, method.reduction_factor, method.non_linearity) == (4, 32, "gelu_new")
    assert method.unfreeze_layer_norms and not method.adapter_layernorm_after
    assert (config.train.learning_rate, config.train.batch_size, config.train.epochs) == (3e-3, 100, 20)
    assert (config.train.warmup_steps, config.data.splits, config.model.resize_vocab) == (500, "seq2seq", 32100)
    assert config.data.task_prefix is False       # task adapters: no task-name prefix (run_seq2seq.py:386)
    assert config.do_train and config.tasks == ("rte",)


@pytest.mark.parametrize("flags, method, fields", [
    ({"add_adapter_in_self_attention": False}, "compacter++", {"mh_adapter": False}),
    ({"factorized_phm": False, "shared_phm_rule": False, "hypercomplex_division": 12}, "phm_adapter",
     {"phm_dim": 12}),
    ({"hypercomplex_adapters": False, "low_rank_adapters": True}, "low_rank_adapter", {"low_rank_rank": 1}),
    ({"hypercomplex_adapters": False, "add_adapter_in_feed_forward": False}, "houlsby",
     {"mh_adapter": True, "output_adapter": False}),        # Compacter's pfeiffer_adapters.json
    ({"hypercomplex_adapters": False, "task_adapter_in_decoder": False}, "houlsby", {"decoder_layers": ()}),
    ({"train_task_adapters": False, "bitfit": True, "freeze_bitfit_lm_head": True}, "bitfit",
     {"freeze_bitfit_lm_head": True}),
    ({"train_task_adapters": False, "intrinsic_model": True, "intrinsic_dim": 20000}, "intrinsic_did",
     {"intrinsic_dim": 20000}),                           # training_args.py:40: DID unless intrinsic_said
    ({"train_task_adapters": False, "prefix_tuning": True, "init_prefix_from_vocab": True}, "prompt_tuning",
     {"length": 100, "init": "vocab", "vocab_ids": "first"}),
    ({"train_task_adapters": False}, "full", {}),
])
def test_each_method_family_translates(flags, method, fields):
    config = config_of({**COMPACTER, **flags})
    assert config.method["method"] == method
    built = config.method_config()
    for key, value in fields.items():
        assert getattr(built, key) == value


def test_an_attempt_file_reproduces_the_code():
    translation = translate_mapping(ATTEMPT, "attempt/configs/x.json")
    config = RunConfig.from_dict(translation.config)
    method = config.method_config()
    assert translation.code_base == "attempt" and method.compat == "attempt"
    assert method.sources == ("src/mnli.pt", "src/qnli.pt") and method.temperature == 2087
    assert method.tasks == ("cb", "wic") and method.target_init == 0      # shared_attn: one target per task
    # attn_learning_rate never applies (run_seq2seq.py:431); it switches the optimizer's eps to 1e-6 (A5)
    assert config.train.param_groups == () and config.train.adam_epsilon == 1e-6
    assert config.data.prefixes == {"cb": "superglue-cb", "wic": "superglue-wic"}
    assert config.train.select_on == "cb"                # the first eval set picks the best checkpoint
    assert "attn_learning_rate" in translation.origin["train.adam_epsilon"]


def test_without_shared_attn_the_tasks_share_one_target():
    config = config_of({k: v for k, v in ATTEMPT.items() if k != "shared_attn"})
    assert config.method_config().tasks == ()


def test_an_evaluation_only_file_trains_nothing_and_reads_the_runs_outputs():
    seed = {k: v for k, v in ATTEMPT.items() if k != "do_train"}
    config = config_of({**seed, "output_dir": "out"})
    method = config.method_config()
    assert not config.do_train
    assert method.attn_init == ("out/attn_W_down.pt", "out/attn_W_up.pt")
    assert method.target_files == ("out/prefix_embeddings_superglue-cb.pt", "out/prefix_embeddings_superglue-wic.pt")
    assert method.target_init == 1      # not training: the target starts from the last source (:189-193)


def test_multi_task_compacter_gets_one_adapter_per_task():
    config = config_of({**COMPACTER, "task_name": ["rte", "mrpc"], "eval_dataset_name": ["rte", "mrpc"],
                        "test_dataset_name": ["rte", "mrpc"]})
    assert config.adapters == "per_task" and config.data.mixing == "per_task"


def test_every_key_is_translated_or_listed_as_ignored():
    translation = translate_mapping({**COMPACTER, "max_seq_length": 128, "save_total_limit": 1}, "seed.json")
    assert {"max_seq_length", "save_total_limit", "dataset_config_name", "predict_with_generate"} <= set(
        translation.ignored)
    assert "# run_seq2seq.py:343" in translation.to_yaml()


@pytest.mark.parametrize("extra, message", [
    ({"task_reduction_facter": 8}, r"unknown key 'task_reduction_facter' \(did you mean 'task_reduction_factor'"),
    ({"adapter_config_name": "pfeiffer"}, r"adapter_config_name: 'pfeiffer': the code knows only 'adapter'"),
    ({"load_best_model_at_end": False}, r"load_best_model_at_end: False: peftlab always tests the checkpoint"),
    ({"num_beams": 4}, r"num_beams: 4: peftlab evaluates by greedy generation"),
    ({"task_name": ["no-such-task"]}, r"task_name: unknown task 'no-such-task'"),
])
def test_what_cannot_be_reproduced_is_refused_in_one_line(extra, message):
    with pytest.raises(PeftlabError, match=message) as err:
        translate_mapping({**COMPACTER, **extra}, "seed.json")
    assert "\n" not in str(err.value)


def test_a_wrong_type_names_the_original_key(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({**COMPACTER, "num_train_epochs": "twenty"}))
    with pytest.raises(PeftlabError, match=r"train.epochs.*\(from the original's num_train_epochs\)"):
        load_run_config(path)


def test_the_seq2seq_split_is_the_codes_torch_permutation():
    """compacter data/tasks.py:60-64, 95-118: torch.randperm(n, manual_seed(42)); halves for small tasks."""
    rows = [Example("mrpc", {"sentence1": str(i), "sentence2": ""}, 0) for i in range(10)]
    splits = seq2seq_splits(get_task("mrpc"), rows, rows)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(42)).tolist()
    assert [e.fields["sentence1"] for e in splits["validation"]] == [str(i) for i in order[:5]]
    assert [e.fields["sentence1"] for e in splits["test"]] == [str(i) for i in order[5:]]
    big = [Example("sst2", {"sentence": str(i)}, 0) for i in range(1200)]
    large = seq2seq_splits(get_task("sst2"), big, rows)
    assert len(large["validation"]) == 1000 and len(large["train"]) == 200 and large["test"] == rows


def test_the_codes_task_name_starts_the_source():
    config = config_of({**ATTEMPT})
    task = config.task_list()[0]
    assert task.source_text(Example("cb", {"premise": "p", "hypothesis": "h"}, 0)).startswith("superglue-cb premise:")
    plain = config_of({**COMPACTER}).task_list()[0]
    assert plain.source_text(Example("rte", {"sentence1": "p", "sentence2": "h"}, 0)).startswith("sentence1: p")


def test_a_seed_file_loads_through_the_same_door(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(COMPACTER))
    config = load_run_config(path, ["train.epochs=1"])
    assert config.method["method"] == "compacter" and config.train.epochs == 1


def test_the_codes_text_quirks_under_its_translation():
    """compacter data/tasks.py:249 and data/utils.py:16; ATTEMPT's WinoGrande preprocessor."""
    config = config_of({**COMPACTER, "task_name": ["mnli", "stsb"], "eval_dataset_name": ["mnli", "stsb"],
                        "test_dataset_name": ["mnli", "stsb"], "train_task_adapters": False})
    mnli, stsb = config.task_list()
    row = Example("mnli", {"premise": "p", "hypothesis": "h"}, 0)
    assert mnli.source_text(row) == "mnli premise: p hypothesis h"
    assert stsb.target_text(Example("stsb", {"sentence1": "a", "sentence2": "b"}, 3.27)) == "3.3"   # 0.2 steps: 3.2
    plain = RunConfig.from_dict({"tasks": ["mnli"]}).task_list()[0]
    assert plain.source_text(row) == "mnli premise: p hypothesis: h"
    attempt = config_of({**ATTEMPT, "task_name": ["winogrande"], "shared_attn": False}).task_list()[0]
    wino = Example("winogrande", {"sentence": "s _", "option1": "A", "option2": "B"}, 0)
    assert attempt.source_text(wino) == "winogrande sentence: s _ option0: A option1: A"


def test_generation_budgets_are_the_codes():
    """compacter: 20 during training, val_max_target_length (128) at the end; ATTEMPT: 20 throughout."""
    compacter = config_of(COMPACTER)
    assert (compacter.model.eval_max_new_tokens, compacter.model.final_max_new_tokens) == (19, 127)
    attempt = translate_mapping({**ATTEMPT, "val_max_target_length": 50}, "attempt/configs/x.json")
    config = RunConfig.from_dict(attempt.config)
    assert (config.model.eval_max_new_tokens, config.model.final_max_new_tokens) == (19, 19)
    assert "val_max_target_length" in attempt.ignored


def test_attempt_scores_every_task_with_the_first_tasks_metrics():
    """run_seq2seq.py:403-424, eval_seq2seq.py:368-389: a SuperGLUE run led by BoolQ scores CB by accuracy."""
    config = config_of({**ATTEMPT, "task_name": ["superglue-boolq", "superglue-cb"]})
    assert config.data.metrics_from == "boolq"
    boolq, cb = config.task_list()
    assert cb.metrics == boolq.metrics == get_task("boolq").metrics != get_task("cb").metrics
    assert config_of(COMPACTER).data.metrics_from is None
