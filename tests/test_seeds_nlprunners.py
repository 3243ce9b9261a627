"""nlprunners (zphang/nlprunners 37edf66): adapters.md's command lines translated, and runscript.py's
`model.p` read safely and converted into a peftlab Houlsby adapter (docs: /work/notes/nlprunners.md)."""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import peftlab as pl
from peftlab.core import adapter_state
from peftlab.errors import PeftlabError
from peftlab.io import copy_into
from peftlab.registry import config_from_dict
from peftlab.released import houlsby_config, houlsby_from_model_p, nlprunners_source, read_model_p
from peftlab.seeds.nlprunners import translate_command
from peftlab.train.schema import RunConfig
from tiny import tiny_batch, tiny_model

ADAPTERS_MD = Path("/work/shared/seed-configs/nlprunners/packaging/adapters.md")
SINGLE = "nlprunners/nlpr/proj/adapters/runscript.py"
MULTI = "nlprunners/nlpr/proj/adapters/runscript_multi_adapter.py"


def _commands(text: str, env: dict) -> list[list[str]]:
    """The `python ...` command lines of the markdown's bash blocks, ${VARS} replaced from `env`."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line)
            if tokens and tokens[0] == "python":
                out.append([re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], t) for t in tokens[1:]])
    return out


@pytest.fixture
def seed(tmp_path):
    if not ADAPTERS_MD.is_file():
        pytest.skip("/work/shared/seed-configs is absent")
    env = {"NLPR_BASE_DIR": str(tmp_path / "nlpr"), "NLPR_ADAPTER_DIR": str(tmp_path / "adapters") + "/"}
    configs = tmp_path / "adapters" / "configs"
    configs.mkdir(parents=True)
    # step 2 of adapters.md: the JSON naming the single adapters' model.p files
    single = env["NLPR_ADAPTER_DIR"] + "/single"
    (configs / "adapter_weights.json").write_text(json.dumps({"rte": f"{single}/rte/model.p",
                                                              "mrpc": f"{single}/mrpc/model.p"}))
    commands = _commands(ADAPTERS_MD.read_text(), env)
    assert [Path(c[0]).name for c in commands] == ["runscript.py", "runscript.py", "runscript_multi_adapter.py"]
    return commands, env


def _translate(command, processes=1):
    return translate_command(command[0], command[1:], "adapters.md", processes)


# --- the command lines of adapters.md ----------------------------------------------------------------

def test_single_adapter_commands_are_houlsby_64_gelu_with_layer_norms_and_head(seed):
    commands, _ = seed
    for command, task in zip(commands[:2], ("mrpc", "rte")):
        out = _translate(command)
        config = RunConfig.from_dict(out.config)            # a valid run config
        method = config.method_config()
        assert method.method == "houlsby" and method.bottleneck_size == 64 and method.non_linearity == "gelu"
        assert method.mh_adapter and method.output_adapter and method.unfreeze_layer_norms and method.train_head
        assert method.init == "near_identity" and method.init_std == 2e-4 and method.scaling == 1.0
        assert config.tasks == (task,) and config.model.name == "roberta-base" and config.data.splits == "official"
        train = config.train
        assert (train.batch_size, train.learning_rate, train.epochs) == (4, 1e-4, 5.0)
        assert (train.warmup_ratio, train.schedule, train.lr_end, train.weight_decay) == (0.1, "linear", 0.0, 0.01)
        assert (train.eval_strategy, train.eval_steps, train.max_grad_norm) == ("steps", 500, 1.0)
        assert train.adam_epsilon == 1e-8 and tuple(train.adam_betas) == (0.9, 0.999) and train.precision == "fp32"
        assert config.do_train and config.output_dir.endswith(f"single/{task}")
        assert {"--do_save", "--do_val", "--force_overwrite", "--partial_eval_number"} <= set(out.ignored)


def test_multi_adapter_command_is_weighted_sum_of_the_json_sources(seed):
    commands, env = seed
    out = _translate(commands[2])
    config = RunConfig.from_dict(out.config)
    method = config.method_config()
    assert method.method == "weighted_sum" and method.adapters == ("rte", "mrpc")     # JSON order
    assert method.sources == {"rte": f"{env['NLPR_ADAPTER_DIR']}/single/rte/model.p",
                              "mrpc": f"{env['NLPR_ADAPTER_DIR']}/single/mrpc/model.p"}
    assert (method.mode, method.num_weight_sets, method.train_mode) == ("softmax", 1, "base")
    assert method.include_base and not method.flex and method.head_from is None and method.compat == "nlprunners"
    assert config.train.learning_rate == 1e-3
    assert config.train.param_groups == ({"pattern": r"(^|\.)weight_sets\.weights$", "learning_rate": 0.01,
                                          "weight_decay": 0.0},)
    assert {"--adapter_include_base", "--adapter_include_flex"} <= set(out.ignored)
    assert any("KeyError" in note for note in out.notes)      # the default --adapter_exclude '' crashes


def test_processes_multiply_the_per_gpu_batch(seed):
    commands, _ = seed
    assert _translate(commands[0], processes=2).config["train"]["batch_size"] == 8


def test_multi_adapter_without_its_json_is_refused_naming_the_file(seed, tmp_path):
    commands, env = seed
    (Path(env["NLPR_ADAPTER_DIR"]) / "configs" / "adapter_weights.json").unlink()
    with pytest.raises(PeftlabError, match="adapter_weights.json: file not found") as err:
        _translate(commands[2])
    assert "\n" not in str(err.value)


def test_the_trainable_counts_on_roberta_base_match_the_reference():
    """runscript.py: 24 adapters (2,379,264) + 25 LayerNorms (38,400) + head (592,130) = 3,009,794;
    the multi-adapter in `base` mode: 3 weights + the head = 592,133 (notes/nlprunners.md §A, §B)."""
    from peftlab.params_table import count
    from peftlab.methods.weighted_sum import WeightedSumConfig
    from peftlab.models import build_from_config, load_config
    assert count("roberta-base", config_from_dict(houlsby_config()))[0] == 3_009_794
    model = build_from_config(load_config("roberta-base"), meta=True)
    for name in ("rte", "mrpc"):
        pl.attach(model, config_from_dict(houlsby_config()), name, activate=False, trainable=False)
    pl.attach(model, WeightedSumConfig(adapters=("rte", "mrpc"), compat="nlprunners"), "mix")
    assert pl.trainable_parameters(model)[0] == 592_133


def test_weight_decay_falls_on_the_head_weights_only_and_the_mix_weights_train_at_0_01(seed):
    """model_setup.py:250-289: no decay for biases, LayerNorms and adapter weights; lr 0.01 for the mix."""
    from peftlab.methods.weighted_sum import WeightedSumConfig
    from peftlab.train.optim import param_groups
    commands, _ = seed
    single = RunConfig.from_dict(_translate(commands[0]).config)
    model = tiny_model("roberta")
    pl.attach(model, config_from_dict(dict(houlsby_config(), bottleneck_size=8)), "a")
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in param_groups(model, single.train) if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"classifier.dense.weight", "classifier.out_proj.weight"}
    multi = RunConfig.from_dict(_translate(commands[2]).config)
    pl.attach(model, config_from_dict(dict(houlsby_config(), bottleneck_size=8)), "b", activate=False)
    pl.attach(model, WeightedSumConfig(adapters=("a", "b"), compat="nlprunners"), "mix")
    groups = param_groups(model, multi.train)
    names = {id(p): n for n, p in model.named_parameters()}
    fast = [names[id(p)] for g in groups if g["lr"] == 0.01 for p in g["params"]]
    assert fast == ["peftlab_adapters.mix.weight_sets.weights"]


# --- refusals: one line each -----------------------------------------------------------------------

BASE = ["--ZZsrc", "/nowhere/models/roberta-base/config.json", "--task_config_path", "/d/configs/rte.json",
        "--output_dir", "/o", "--do_train"]


@pytest.mark.parametrize("extra, multi, message", [
    (["--learnig_rate", "1e-4"], False, "unknown flag (did you mean 'learning_rate'?)"),
    (["--train_batch_size", "four"], False, "--train_batch_size: expected an int"),
    (["--learning_rate", "fast"], False, "--learning_rate: expected a float"),
    (["--do_train=1"], False, "takes no value"),
    (["--model_type", "roberta-large"], False, "also set by --ZZsrc"),
    (["--gradient_accumulation_steps", "2"], False, "never steps the optimizer"),
    (["--warmup_steps", "100"], False, "RuntimeError"),
    (["--optimizer_type", "radam"], False, "AdamW only"),
    (["--train_examples_number", "100"], False, "random subset"),
    (["--eval_every_steps", "100", "--partial_eval_number", "100"], False, "selects on the first 100 dev rows"),
    (["--fp16", "--fp16_opt_level", "O2"], False, "apex O2/O3"),
    (["--adapter_ft_mode", "base", "--adapter_use_optimized", "0"], True, "unoptimised path"),
    (["--adapter_use_optimized", "1"], True, "raises KeyError in _post_init"),
    (["--adapter_ft_mode", "full_ft", "--adapter_use_optimized", "1"], True, "sources it loads frozen"),
    (["--adapter_ft_mode", "base", "--adapter_use_optimized", "1", "--adapter_num_weight_sets", "5"], True,
     "must be -1 or divide"),
    (["--adapter_ft_mode", "base", "--adapter_use_optimized", "1", "--adapter_exclude", "cola"], True,
     "not a name of"),
    (["stray"], False, "unrecognized argument"),
])
def test_refusals_are_one_line(tmp_path, extra, multi, message):
    weights = tmp_path / "adapter_weights.json"
    weights.write_text(json.dumps({"rte": "rte.p", "mrpc": "mrpc.p"}))
    args = BASE + (["--adapter_weights_path", str(weights)] if multi else []) + extra
    with pytest.raises(PeftlabError) as err:
        translate_command(MULTI if multi else SINGLE, args, "cmd")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_zzsrc_is_read_when_present_and_overridable(tmp_path):
    src = tmp_path / "config.json"
    src.write_text(json.dumps({"model_type": "roberta-large", "model_path": "/m/model/roberta-large.p"}))
    args = ["--ZZsrc", str(src), "--task_config_path", "mrpc.json", "--output_dir", "/o", "--do_train"]
    assert translate_command(SINGLE, args, "cmd").config["model"]["name"] == "roberta-large"
    args += ["--model_type", "roberta-base", "--model_path", "/x/roberta-base.p", "--ZZoverrides", "model_type",
             "model_path"]
    assert translate_command(SINGLE, args, "cmd").config["model"]["name"] == "roberta-base"


def test_prefixes_and_equals_read_as_argparse_reads_them():
    out = translate_command(SINGLE, BASE + ["--learning=3e-4", "--num_train", "2", "--seed", "-1"], "cmd")
    assert out.config["train"]["learning_rate"] == 3e-4 and out.config["train"]["epochs"] == 2.0


def test_without_do_train_runscript_only_evaluates():
    out = translate_command(SINGLE, [a for a in BASE if a != "--do_train"], "cmd")
    assert out.config["do_train"] is False


# --- model.p: safe reading and conversion ----------------------------------------------------------

class _Thing:
    pass


def _a_function():
    return 1


@pytest.mark.parametrize("payload, why", [
    ({"w": _Thing()}, "refused"), ({"w": _a_function}, "refused"), ({"w": _Thing}, "refused"),
    ({"model": {"w": torch.ones(1)}}, "'model' holds a dict"), ([torch.ones(1)], "holds a list"),
    ({1: torch.ones(1)}, "key 1 is a int"),
])
def test_read_model_p_refuses_anything_but_a_flat_mapping_of_tensors(tmp_path, payload, why):
    path = tmp_path / "model.p"
    torch.save(payload, path)
    with pytest.raises(PeftlabError) as err:
        read_model_p(path)
    assert str(path) in str(err.value) and why in str(err.value) and "\n" not in str(err.value)


def test_read_model_p_refuses_a_pickle_that_would_run_code(tmp_path):
    class Runs:
        def __reduce__(self):
            return (os.getcwd, ())
    path = tmp_path / "model.p"
    torch.save({"w": Runs()}, path)
    with pytest.raises(PeftlabError, match="refused: not a file of tensors only"):
        read_model_p(path)


def _fake_model_p(model, arch: str, size: int = 8) -> dict:
    """What runscript.py saves (runscript.py:171-178) for `model`: random adapters, LayerNorms, head."""
    g = torch.Generator().manual_seed(3)
    enc, d = ("bert" if arch == "bert" else "roberta"), model.config.hidden_size
    out = {}
    for i in range(model.config.num_hidden_layers):
        for sub in ("attention.output", "output"):
            prefix = f"{enc}.encoder.layer.{i}.{sub}"
            out[f"{prefix}.adapter.down_project.weight"] = 0.3 * torch.randn(size, d, generator=g)
            out[f"{prefix}.adapter.down_project.bias"] = 0.3 * torch.randn(size, generator=g)
            out[f"{prefix}.adapter.up_project.weight"] = 0.3 * torch.randn(d, size, generator=g)
            out[f"{prefix}.adapter.up_project.bias"] = 0.3 * torch.randn(d, generator=g)
            out[f"{prefix}.LayerNorm.weight"] = 1 + 0.2 * torch.randn(d, generator=g)
            out[f"{prefix}.LayerNorm.bias"] = 0.2 * torch.randn(d, generator=g)
    out[f"{enc}.embeddings.LayerNorm.weight"] = 1 + 0.2 * torch.randn(d, generator=g)
    out[f"{enc}.embeddings.LayerNorm.bias"] = 0.2 * torch.randn(d, generator=g)
    state = model.state_dict()
    for name in [n for n in state if n.startswith("classifier.")]:
        out[name] = torch.randn(state[name].shape, generator=g)
    # the pooler is listed too (model_setup.py:26-31, 48-50): RoBERTa's is random and never trained
    out[f"{enc}.pooler.dense.weight"] = state.get(f"{enc}.pooler.dense.weight", torch.randn(d, d, generator=g))
    out[f"{enc}.pooler.dense.bias"] = state.get(f"{enc}.pooler.dense.bias", torch.zeros(d))
    return out


def _nlprunners_forward(model, tensors: dict):
    """nlprunners' own computation on `model`: each BertSelfOutput/BertOutput computes
    LN(adapter(dropout(dense(h))) + x), adapter(z) = z + W_up gelu(W_down z + b_d) + b_u (modeling.py:39-43, 62-67)."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in tensors and "pooler" not in name:
                param.copy_(tensors[name])
    for path, module in reference.named_modules():
        if type(module).__name__ not in ("BertSelfOutput", "BertOutput", "RobertaSelfOutput", "RobertaOutput"):
            continue
        down_w, down_b, up_w, up_b = (tensors[f"{path}.adapter.{p}"] for p in (
            "down_project.weight", "down_project.bias", "up_project.weight", "up_project.bias"))

        def forward(m, args, out, down_w=down_w, down_b=down_b, up_w=up_w, up_b=up_b):
            h, x = args
            z = m.dropout(m.dense(h))
            z = z + F.linear(F.gelu(F.linear(z, down_w, down_b)), up_w, up_b)
            return m.LayerNorm(z + x)
        module.register_forward_hook(forward)
    return reference


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_model_p_round_trip_computes_nlprunners_adapter(tmp_path, arch):
    model = tiny_model(arch)
    tensors = _fake_model_p(model, arch)
    path = tmp_path / "model.p"
    torch.save(tensors, path)
    if arch == "bert":   # BERT's pooler is trained by nlprunners: refused unless dropped on purpose
        with pytest.raises(PeftlabError, match="pooler"):
            nlprunners_source(path)
    config, weights = nlprunners_source(path, drop_trained_pooler=True)
    assert config["bottleneck_size"] == 8 and config["non_linearity"] == "gelu"
    reference = _nlprunners_forward(model, tensors)
    pl.attach(model, config_from_dict(config), "single")
    copy_into(adapter_state(model, "single"), weights, path)
    state = adapter_state(model, "single")
    enc = "bert" if arch == "bert" else "roberta"
    key = f"parts.{enc}.encoder.layer.1.output.dropout.0.net.up.weight"
    assert torch.equal(state[key], tensors[f"{enc}.encoder.layer.1.output.adapter.up_project.weight"])
    assert torch.equal(dict(model.named_parameters())[f"{enc}.embeddings.LayerNorm.bias"],
                       tensors[f"{enc}.embeddings.LayerNorm.bias"])
    batch = {k: v for k, v in tiny_batch(arch).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=1e-5)


def test_conversion_names_a_missing_or_misshapen_tensor(tmp_path):
    model = tiny_model("roberta")
    tensors = _fake_model_p(model, "roberta")
    broken = dict(tensors)
    del broken["roberta.encoder.layer.1.output.LayerNorm.bias"]
    with pytest.raises(PeftlabError, match="'roberta.encoder.layer.1.output.LayerNorm.bias' is missing"):
        houlsby_from_model_p(broken)
    broken = dict(tensors, **{"roberta.encoder.layer.0.output.adapter.up_project.bias": torch.zeros(3)})
    with pytest.raises(PeftlabError, match="has shape \\[3\\], expected \\[16\\]"):
        houlsby_from_model_p(broken)
    with pytest.raises(PeftlabError, match="'lm_head.bias' is not a tensor of an nlprunners single adapter"):
        houlsby_from_model_p(dict(tensors, **{"lm_head.bias": torch.zeros(3)}))


def test_read_model_p_reads_the_legacy_torch_format_of_2020(tmp_path):
    path = tmp_path / "model.p"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)   # torch < 1.6 files
    assert torch.equal(read_model_p(path)["a"], torch.ones(2))
    path.write_bytes(b"not a pickle")
    with pytest.raises(PeftlabError, match="refused"):
        read_model_p(path)


def test_converted_weights_have_the_keys_and_shapes_pl_save_writes(tmp_path):
    from safetensors.torch import load_file
    model = tiny_model("roberta")
    config, weights = houlsby_from_model_p(_fake_model_p(model, "roberta"))
    pl.attach(model, config_from_dict(config), "a")
    saved = load_file(str(pl.save(model, tmp_path / "a", "a") / "peftlab_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in weights.items()}
    config, weights = houlsby_from_model_p(_fake_model_p(model, "roberta"), keep_head=False)
    assert config["train_head"] is False and not any(k.startswith("base.classifier.") for k in weights)


def test_converted_sources_mix_with_each_ones_own_layer_norms(tmp_path):
    """As a weighted_sum source (the loader reading model.p is another change): each branch normalises
    with that source's trained LayerNorm (multi_adapter_modeling.py:574-577, 619-626)."""
    from safetensors.torch import save_file
    from peftlab.io import fingerprint
    from peftlab.methods.weighted_sum import NormMix, WeightedSumConfig
    model, dirs, tensors = tiny_model("roberta"), {}, {}
    for seed_, name in enumerate(("rte", "mrpc")):
        tensors[name] = {k: v + seed_ for k, v in _fake_model_p(model, "roberta").items()}
        config, weights = houlsby_from_model_p(tensors[name], keep_head=False)
        folder = tmp_path / name
        folder.mkdir()
        save_file(weights, str(folder / "peftlab_weights.safetensors"))
        meta = {"format": "peftlab-adapter", "format_version": 1, "name": name, "config": config,
                "fingerprint": fingerprint(model)}
        (folder / "peftlab_config.json").write_text(json.dumps(meta))
        dirs[name] = str(folder)
    pl.attach(model, WeightedSumConfig(adapters=("rte", "mrpc"), sources=dirs, compat="nlprunners"), "mix")
    mixers = [p for m in model.modules() for parts in getattr(m, "parts", {}).values() for p in parts
              if isinstance(p, NormMix)]
    assert len(mixers) == 4
    first = mixers[0]
    for norm, name in zip(first.norms, ("rte", "mrpc")):
        key = "roberta.encoder.layer.0.attention.output.LayerNorm.weight"
        torch.testing.assert_close(norm.weight, tensors[name][key])
