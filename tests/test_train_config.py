"""The run config schema (typed, validated before any model loads), overrides, and the translation of
the seeds' Compacter / ATTEMPT config keys."""
from __future__ import annotations

import json

import pytest

from peftlab.errors import PeftlabError
from peftlab.train.schema import RunConfig, apply_overrides, load_run_config, read_config_file

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
    with pytest.raises(PeftlabError, match=r"precision: 'fp8' is not one of \['fp32', 'bf16', 'fp16'\]"):
        RunConfig.from_dict({"tasks": ["rte"], "train": {"precision": "fp8"}})
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




@pytest.mark.parametrize("text, message", [
    ("tasks: [rte]\ntasks: [mrpc]\n", r"line 2: key 'tasks' is given twice"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"b{i}: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                                        for i in range(12)), r"more than 100 YAML aliases"),
    ("tasks: !!python/name:os.system\n", r"not valid YAML"),
])
def test_yaml_refuses_duplicate_keys_alias_bombs_and_python_tags(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(PeftlabError, match=message) as err:
        read_config_file(path)
    assert "\n" not in str(err.value)
