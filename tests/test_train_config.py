"""The run config schema (typed, validated before any model loads), overrides, and the translation of
the seeds' Compacter / ATTEMPT config keys."""
from __future__ import annotations

import json

import pytest

from peftlab.errors import PeftlabError
from peftlab.train.schema import RunConfig, apply_overrides, load_run_config, read_config_file
from peftlab.train.seeds import translate

COMPACTER_SEED = {
    "model_name_or_path": "t5-base", "tokenizer_name": "t5-base", "learning_rate": 3e-3, "output_dir": "out/c",
    "max_source_length": 128, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 64,
    "num_train_epochs": 20, "warmup_steps": 500, "task_name": ["rte"], "eval_dataset_name": ["rte"],
    "test_dataset_name": ["rte"], "dataset_config_name": ["en"], "split_validation_test": True,
    "train_task_adapters": True, "task_reduction_factor": 32, "hypercomplex_adapters": True,
    "hypercomplex_division": 4, "factorized_phm": True, "shared_phm_rule": True, "unfreeze_layer_norms": True,
    "non_linearity": "gelu_new", "predict_with_generate": True, "do_train": True, "evaluation_strategy": "epoch",
    "task_adapter_layers_encoder": [5, 6], "task_adapter_layers_decoder": [5, 6],
}
ATTEMPT_SEED = {
    "model_name_or_path": "t5-base", "learning_rate": 0.3, "task_name": ["superglue-cb", "superglue-wic"],
    "attn_prefix_tuning": True, "prefix_tuning": True, "prefix_dim": 100, "attn_learning_rate": 0.1,
    "prompt_embedding_path": ["src/mnli", "src/qnli"], "load_prefix_embeddings": True, "save_prefix_only": True,
    "temperature": 2087, "max_steps": 3000, "eval_steps": 50, "evaluation_strategy": "steps",
}


def test_unknown_keys_name_the_key_and_the_closest_valid_one():
    with pytest.raises(PeftlabError, match=r"unknown config key 'taks' \(did you mean 'tasks'\?\)"):
        RunConfig.from_dict({"taks": ["rte"]})
    with pytest.raises(PeftlabError, match=r"unknown config key 'train.learnig_rate' \(did you mean 'learning_rate'"):
        RunConfig.from_dict({"tasks": ["rte"], "train": {"learnig_rate": 1e-3}})
    with pytest.raises(PeftlabError, match=r"unknown config key 'train.param_groups\[0\].lr'"):
        RunConfig.from_dict({"tasks": ["rte"], "train": {"param_groups": [{"pattern": "x", "lr": 1}]}})


def test_values_are_typed_and_validated():
    with pytest.raises(PeftlabError, match=r"train.batch_size: expected int, got 'big'"):
        RunConfig.from_dict({"tasks": ["rte"], "train": {"batch_size": "big"}})
    with pytest.raises(PeftlabError, match=r"precision: 'fp16' is not one of \['fp32', 'bf16'\]"):
        RunConfig.from_dict({"tasks": ["rte"], "train": {"precision": "fp16"}})
    with pytest.raises(PeftlabError, match="not a multiple of gradient_accumulation_steps"):
        RunConfig.from_dict({"tasks": ["rte"], "train": {"batch_size": 10, "gradient_accumulation_steps": 4}})
    with pytest.raises(PeftlabError, match="unknown task 'rtee'"):
        RunConfig.from_dict({"tasks": ["rtee"]})
    with pytest.raises(PeftlabError, match="tasks: name at least one task"):
        RunConfig.from_dict({})
    with pytest.raises(PeftlabError, match="per_task needs data.mixing: per_task"):
        RunConfig.from_dict({"tasks": ["rte", "cola"], "adapters": "per_task"})


def test_method_config_is_validated_before_any_model_loads(monkeypatch):
    import peftlab.models
    monkeypatch.setattr(peftlab.models, "load_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(PeftlabError, match=r"unknown key 'reduction_factr' \(did you mean 'reduction_factor'"):
        RunConfig.from_dict({"tasks": ["rte"], "method": {"method": "houlsby", "reduction_factr": 8}})
    with pytest.raises(PeftlabError, match="unknown method 'housby'"):
        RunConfig.from_dict({"tasks": ["rte"], "method": {"method": "housby"}})


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides({"tasks": ["rte"], "train": {"epochs": 3}},
                           ["train.learning_rate=1e-3", "tasks=[rte, cola]", "model.name=t5-small", "data.dir="])
    config = RunConfig.from_dict(data)
    assert config.train.learning_rate == 1e-3 and config.tasks == ("rte", "cola")
    assert config.model.name == "t5-small" and config.data.dir is None and config.train.epochs == 3
    with pytest.raises(PeftlabError, match="is not key=value"):
        apply_overrides({}, ["train.learning_rate"])


def test_config_files_yaml_json_and_bad_files(tmp_path):
    good = tmp_path / "run.yaml"
    good.write_text("tasks: [sst2]\nmethod: {method: lora, r: 4}\ntrain: {epochs: 1}\n")
    assert load_run_config(good, ["train.seed=7"]).train.seed == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [sst2\nmethod: x\n")
    with pytest.raises(PeftlabError, match=r"bad\.yaml:\d+: not valid YAML"):
        read_config_file(bad)
    with pytest.raises(PeftlabError, match=r"missing\.json: file not found"):
        read_config_file(tmp_path / "missing.json")


def test_compacter_seed_config_translates():
    out = translate(COMPACTER_SEED)
    config = RunConfig.from_dict(out)
    method = config.method_config()
    assert config.method["method"] == "compacter" and method.phm_dim == 4 and method.shared_phm_rule
    assert method.factorized_phm_W and method.reduction_factor == 32 and method.unfreeze_layer_norms
    assert method.encoder_layers == (5, 6) and method.decoder_layers == (5, 6) and method.non_linearity == "gelu_new"
    assert config.model.name == "t5-base" and config.model.max_length == 128
    assert (config.train.learning_rate, config.train.batch_size, config.train.eval_batch_size) == (3e-3, 32, 64)
    assert (config.train.epochs, config.train.warmup_steps, config.data.splits) == (20, 500, "paper")
    assert config.tasks == ("rte",) and config.output_dir == "out/c"


@pytest.mark.parametrize("flags, method, fields", [
    ({"hypercomplex_division": 4, "add_adapter_in_self_attention": False}, "compacter++", {"phm_dim": 4}),
    ({"factorized_phm": False, "shared_phm_rule": False, "hypercomplex_division": 12}, "phm_adapter", {"phm_dim": 12}),
    ({"hypercomplex_adapters": False, "low_rank_adapters": True, "low_rank_rank": 1}, "low_rank_adapter",
     {"low_rank_rank": 1}),
    ({"hypercomplex_adapters": False, "adapter_config_name": "pfeiffer"}, "bottleneck",
     {"mh_adapter": True, "output_adapter": False}),
    ({"hypercomplex_adapters": False}, "houlsby", {"reduction_factor": 32}),
    ({"train_task_adapters": False, "bitfit": True, "freeze_bitfit_lm_head": True}, "bitfit",
     {"freeze_bitfit_lm_head": True}),
    ({"train_task_adapters": False, "intrinsic_model": True, "intrinsic_said": True, "intrinsic_dim": 20000},
     "intrinsic_said", {"intrinsic_dim": 20000}),
    ({"train_task_adapters": False, "prefix_tuning": True, "prefix_dim": 100, "init_prefix_from_vocab": True},
     "prompt_tuning", {"length": 100, "init": "vocab"}),
    ({"train_task_adapters": False}, "full", {}),
])
def test_each_compacter_method_flag_translates(flags, method, fields):
    seed = {k: v for k, v in COMPACTER_SEED.items() if not k.startswith("task_adapter_layers")}
    out = translate({**seed, **flags})
    assert out["method"]["method"] == method
    for key, value in fields.items():
        assert out["method"][key] == value


def test_attempt_seed_config_translates():
    out = translate(ATTEMPT_SEED)
    method = out["method"]
    assert method["method"] == "attempt" and method["sources"] == ["src/mnli", "src/qnli"]
    assert method["length"] == 100 and method["temperature"] == 2087
    assert method["tasks"] == ["superglue-cb", "superglue-wic"]
    assert out["train"]["param_groups"] == [{"pattern": r"prompt\.(down|up|norm)\.", "learning_rate": 0.1}]
    assert out["train"]["max_steps"] == 3000 and out["train"]["eval_strategy"] == "steps"
    config = RunConfig.from_dict(out)          # the method's tasks must be the run's, in order
    assert config.tasks == ("cb", "wic")


def test_multi_task_compacter_gets_one_adapter_per_task():
    out = translate({**COMPACTER_SEED, "task_name": ["rte", "mrpc"]})
    assert out["adapters"] == "per_task" and out["data"]["mixing"] == "per_task"


def test_unknown_seed_key_names_the_closest():
    with pytest.raises(PeftlabError, match=r"unknown seed config key 'task_reduction_facter' \(did you mean "
                                           r"'task_reduction_factor'"):
        translate({**COMPACTER_SEED, "task_reduction_facter": 8})


def test_seed_config_file_loads_through_the_same_door(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(COMPACTER_SEED))
    config = load_run_config(path, ["train.epochs=1"])
    assert config.method["method"] == "compacter" and config.train.epochs == 1
