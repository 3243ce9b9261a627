"""kernel-adapters (ychen-stat-ml/kernel-adapters d22e53f): the NLG JSON configs and the train.py / evaluate.py /
run_glue.py command lines of its run scripts, translated into the same peftlab run (analysis: the repo notes on
kernel-adapters; counts: docs/methods_kernel.md)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.params_table import count
from peftlab.registry import config_from_dict
from peftlab.seeds.kernel import translate_nlg_json
from peftlab.seeds.kernel_glue import translate_command
from peftlab.seeds.shell import python_commands
from peftlab.tasks import get_task
from peftlab.train.schema import RunConfig

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seed-configs" / "kernel-adapters"
NLG, NLU = SEEDS / "nlg", SEEDS / "nlu"


def _has_task(name: str) -> bool:
    try:
        get_task(name)
        return True
    except PeftlabError:
        return False


def _validated(config: dict) -> RunConfig:
    """RunConfig.from_dict; until the webnlg task lands, the NLG runs are checked with e2e in its place."""
    config = copy.deepcopy(config)
    if config["tasks"] == ["webnlg"] and not _has_task("webnlg"):
        config["tasks"] = ["e2e"]
    return RunConfig.from_dict(config)


@pytest.fixture
def seeds():
    if not SEEDS.is_dir():
        pytest.skip("/work/shared/seed-configs is absent")
    return SEEDS


def _nlg(name: str, processes: int = 4, evaluate_only: bool = False):
    path = NLG / "configs" / f"{name}.json"
    return translate_nlg_json(json.loads(path.read_text()), str(path), processes, evaluate_only)


def _commands(script: str, text: str | None = None):
    text = (SEEDS / script).read_text() if text is None else text
    return python_commands(text, variables={}, source=script)


def _translate(command, root: Path, source="script"):
    return translate_command(command.script, list(command.args), f"{source}:{command.line}", command.processes,
                             base_dir=root)


# --- NLG: nlg/configs/*.json -----------------------------------------------------------------------

INDUCER = {"prefix_value_extension": True, "joint_softmax": False, "share_dropout": True,
           "compat": "kernel-adapters", "unfreeze_layer_norms": False}
LORA_Q = {"method": "lora", "alpha": 32.0, "dropout": 0.1, "slots": ["attn.q"], "bias": True}
# per config: (method config, train_batch_size per process, lr, label smoothing, method count on GPT-2 small)
NLG_EXPECTED = {
    "baseline": ({"method": "full"}, 8, 6.25e-5, 0.0, 124_439_808),
    "inducer-no-lora": ({"method": "inducer", "rank_k": 10, "rank_v": 15, "lora": None, "parallel_adapter": None,
                         **INDUCER}, 2, 1.25e-3, 0.1, 2_003_472),
    "inducer-lora": ({"method": "inducer_lora", "rank_k": 5, "rank_v": 12, "lora": {**LORA_Q, "r": 24},
                      "parallel_adapter": None, **INDUCER}, 2, 1.25e-3, 0.1, 2_002_320),
    "inducer-mam": ({"method": "inducer_mam", "rank_k": 3, "rank_v": 7, "lora": {**LORA_Q, "r": 16},
                     "parallel_adapter": {"method": "parallel", "reduction_factor": 18.2, "non_linearity": "relu",
                                          "mh_adapter": False, "output_adapter": True, "parallel": True,
                                          "residual_before_ln": True, "adapter_layernorm_before": True,
                                          "adapter_layernorm_after": False, "scaling": 1.0, "init": "bert",
                                          "layers": None}, **INDUCER}, 4, 1.25e-3, 0.1, 2_020_248),
    "kernel-mix": ({"method": "kernel_mix", "r_q": 3, "r_v": 8, "r_o": 8, "shared_r_q": 12, "shared_r_v": 8,
                    "shared_r_o": 8, "alpha": None, "dropout": 0.1, "targets": ["q", "v", "o"], "init": "normal",
                    "unfreeze_layer_norms": False}, 4, 1.25e-3, 0.1, 2_009_088),
    "pfeiffer-adapter": ({"method": "bottleneck", "reduction_factor": 7.11, "non_linearity": "relu",
                          "mh_adapter": True, "output_adapter": False, "parallel": False, "residual_before_ln": True,
                          "adapter_layernorm_before": True, "adapter_layernorm_after": False, "scaling": 1.0,
                          "init": "bert", "layers": None, "unfreeze_layer_norms": False}, 4, 1.25e-3, 0.1, 2_019_600),
}


@pytest.mark.parametrize("name", sorted(NLG_EXPECTED))
def test_nlg_config_is_the_same_experiment(seeds, name):
    method, per_process, lr, smoothing, _ = NLG_EXPECTED[name]
    out = _nlg(name, processes=4)
    assert out.config["method"] == method
    config = _validated(out.config)
    assert config.do_train and config.model.name == "gpt2" and config.model.head == "causal"
    assert config.model.resize_vocab == 50_273                      # 16 special tokens (train.py:61-65)
    train = config.train
    assert (train.batch_size, train.eval_batch_size) == (per_process * 4, per_process * 4)
    assert (train.learning_rate, train.epochs, train.label_smoothing, train.seed) == (lr, 10.0, smoothing, 123)
    assert (train.warmup_steps, train.schedule, train.lr_end) == (500, "linear_from_warmup", 0.0)
    assert (train.weight_decay, tuple(train.adam_betas), train.adam_epsilon) == (0.0, (0.9, 0.999), 1e-6)
    assert (train.max_grad_norm, train.precision, train.gradient_accumulation_steps) == (1.0, "fp32", 1)
    assert (train.eval_strategy, train.early_stopping_patience) == ("epoch", 5)
    assert out.config["tasks"] == ["webnlg"] and out.config["output_dir"] == f"runs/{name}_webnlg_{lr}_epoch10"
    if name != "baseline":      # the 16 task-embedding rows: a schema field, or a note saying it is missing
        assert out.config["model"].get("train_new_embeddings") or any("NOT REPRODUCED" in n for n in out.notes)
    assert "model_checkpoint" in out.ignored


@pytest.mark.parametrize("name", sorted(NLG_EXPECTED))
def test_nlg_method_counts_match_the_code(seeds, name):
    """The code's own modules (notes C1): identical, without the 16 embedding rows (12,288) the adapter runs
    also train and the unused controller LayerNorms (36,864) inducer-MAM prints."""
    config = copy.deepcopy(_nlg(name).config["method"])
    assert count("gpt2", config_from_dict(config), head="causal")[0] == NLG_EXPECTED[name][4]


def test_nlg_evaluate_only_reads_the_trained_run(seeds):
    out = _nlg("inducer-lora", evaluate_only=True)
    config = _validated(out.config)
    assert not config.do_train and config.init_from == "runs/inducer-lora_webnlg_0.00125_epoch10/adapter/default"
    assert config.output_dir == "results/webnlg/inducer-lora"                         # evaluate.py:245
    assert out.config["method"] == {k: v for k, v in NLG_EXPECTED["inducer-lora"][0].items()
                                    if k != "unfreeze_layer_norms"}
    assert {"lr", "n_epochs", "label_smooth", "unfreeze_task_embeddings"} <= set(out.ignored)


def test_run_nlg_sh_trains_on_four_processes_then_evaluates(seeds):
    commands = _commands("nlg/scripts/run_nlg.sh")
    assert [(Path(c.script).name, c.processes) for c in commands] == [("train.py", 4), ("evaluate.py", 1)]
    trained, evaluated = (_translate(c, NLG, "run_nlg.sh") for c in commands)
    assert trained.config["method"] == NLG_EXPECTED["inducer-mam"][0]
    assert trained.config["train"]["batch_size"] == 16                               # 4 per process x 4
    assert evaluated.config["do_train"] is False
    assert evaluated.config["init_from"] == trained.config["output_dir"] + "/adapter/default"


# --- NLU: nlu/scripts/run_glue.sh ------------------------------------------------------------------

def test_run_glue_sh_is_the_same_experiment(seeds):
    commands = _commands("nlu/scripts/run_glue.sh")
    assert [Path(c.script).name for c in commands] == ["run_glue.py"]
    out = _translate(commands[0], NLU, "run_glue.sh")
    config = RunConfig.from_dict(out.config)
    assert out.config["method"] == {
        "method": "inducer_lora", "rank_k": 2, "rank_v": 4, "prefix_value_extension": True, "joint_softmax": False,
        "share_dropout": True, "parallel_adapter": None, "train_head": False, "compat": "kernel-adapters",
        "lora": {"method": "lora", "r": 4, "alpha": 32.0, "dropout": 0.1, "slots": ["attn.q"], "bias": False}}
    assert config.tasks == ("sst2",) and config.model.name == "roberta-base" and config.model.max_length == 512
    assert (config.data.splits, config.data.max_train_samples, config.data.max_eval_samples) == ("official", 1000, 150)
    train = config.train          # debug=1 (run_glue.sh:161, 192-208)
    assert (train.batch_size, train.learning_rate, train.epochs, train.weight_decay) == (16, 2e-4, 2.0, 0.0)
    assert (tuple(train.adam_betas), train.adam_epsilon, train.max_grad_norm) == ((0.9, 0.98), 1e-6, 1.0)
    assert (train.schedule, train.lr_end, train.warmup_steps) == ("linear", 1e-7, 8)  # ceil(0.06 x 2 x 63)
    assert (train.precision, train.seed, train.eval_strategy, train.eval_steps) == ("fp16", 42, "steps", 100)
    assert train.select_on == "sst2" and config.do_train
    assert {"--logging_steps", "--report_to", "--max_tokens_per_batch", "--mid_dim"} <= set(out.ignored)
    assert count("roberta-base", config.method_config(), head="classification")[0] == 609_120


def test_run_glue_py_on_mnli_also_scores_the_whole_mismatched_set(seeds, tmp_path):
    """run_glue.py:558-565: MNLI is evaluated on validation_matched and, in full, validation_mismatched."""
    from peftlab.train.loop import Trainer
    from test_train_support import tiny_model_dir, write_task_files
    command = _commands("nlu/scripts/run_glue.sh")[0]
    args = [a for a in command.args]
    args[args.index("--task_name") + 1] = "mnli"
    out = translate_command(command.script, args, "run_glue.sh", command.processes, base_dir=NLU)
    assert out.config["data"]["report_mismatched"] is True
    config = {**out.config, "method": {"method": "lora", "r": 2}, "output_dir": str(tmp_path / "run"),
              "model": {"name": str(tiny_model_dir("roberta", tmp_path / "models")), "max_length": 24},
              "data": {**out.config["data"], "dir": str(write_task_files(tmp_path / "data")), "max_eval_samples": 4},
              "train": {**out.config["train"], "max_steps": 1, "precision": "fp32", "progress_bar": False,
                        "tensorboard": False, "eval_strategy": "no"}}
    results = Trainer(RunConfig.from_dict(config)).run()
    scores = results["tasks"]["mnli"]
    assert set(scores) == {"test", "validation_mismatched"} and 0 <= scores["validation_mismatched"]["accuracy"] <= 1
    assert (tmp_path / "run" / "report.md").read_text().count("validation_mismatched") >= 1


def _variant(block: str, extra: str = "") -> str:
    """run_glue.sh with `block` (a '# ----- name -----' section) uncommented and the active one commented."""
    lines, name = [], None
    for line in (SEEDS / "nlu/scripts/run_glue.sh").read_text().splitlines():
        match = re.match(r"# ----- (.*) -----", line)
        name = match[1] if match else (None if line.startswith("####") else name)
        if name and re.match(r"^(# )?\w+=", line):
            line = line[2:] if name == block and line.startswith("# ") else (
                line if line.startswith("#") or name == block else "# " + line)
        lines.append(line)
    return "\n".join(lines).replace("debug=1", "debug=1\n" + extra)


PREFIX_VARS = 'prefix_tuning="landmark"\nprefix_length=2\nprefix_dim=4\nprefix_value_extension=true'


@pytest.mark.parametrize("block, extra, expected", [
    ("inducer w/o lora", "", ("inducer", 609_696)),
    ("lora", PREFIX_VARS, ("lora", 1_474_560)),       # the attention LoRA is overwritten (modeling_roberta.py:177-188)
    ("lora", "", "--prefix_tuning: expected one argument"),        # prefix_* unset: argparse exits
    ("Kernel-mix", "", "--prefix_tuning: expected one argument"),
    ("Kernel-mix", PREFIX_VARS, "--lora_head: absent"),           # never passed (run_glue.sh:227-286)
    ("MAM adapter", "", "--attn_mode prefix"),
    ("inducer + para_ffn", "", "--ffn_mode adapter"),
])
def test_run_glue_sh_variants(seeds, block, extra, expected):
    command = _commands("nlu/scripts/run_glue.sh", _variant(block, extra))[0]
    if isinstance(expected, str):
        with pytest.raises(PeftlabError, match=re.escape(expected)):
            _translate(command, NLU)
        return
    out = _translate(command, NLU)
    config = RunConfig.from_dict(out.config)
    assert out.config["method"]["method"] == expected[0] and out.config["method"]["train_head"] is False
    assert count("roberta-base", config.method_config(), head="classification")[0] == expected[1]


def test_kernel_mix_flags_when_given(seeds):
    args = ["--model_name_or_path", "roberta-base", "--task_name", "rte", "--model_type", "roberta_custom",
            "--do_train", "--do_eval", "--output_dir", "out", "--attn_mode", "kernel", "--attn_option", "QVO",
            "--lora_head", "true", "--lora_head_base", "XKA", "--lora_Q_rank", "1", "--lora_V_rank", "2",
            "--lora_Q_share_rank", "2", "--lora_V_share_rank", "4", "--lora_alpha", "-1", "--lora_dropout", "0.1"]
    out = translate_command("scripts/run_glue.py", args, "cmd")
    assert out.config["method"] == {"method": "kernel_mix", "r_q": 1, "r_v": 2, "r_o": 2, "shared_r_q": 2,
                                    "shared_r_v": 4, "shared_r_o": 4, "alpha": None, "dropout": 0.1,
                                    "targets": ["q", "v", "o"], "init": "normal", "train_head": False}
    config = RunConfig.from_dict(out.config)
    assert config.train.eval_strategy == "no"                     # no --load_best_model_at_end: final weights
    assert count("roberta-base", config.method_config(), head="classification")[0] == 608_256


# --- bad input: one line each ----------------------------------------------------------------------

GLUE = ["--model_name_or_path", "roberta-base", "--task_name", "sst2", "--model_type", "roberta_custom",
        "--output_dir", "out", "--attn_mode", "inducer", "--prefix_tuning", "landmark", "--prefix_length", "2",
        "--prefix_dim", "4", "--prefix_value_extension", "true", "--do_train", "--lora_init", "lora"]


@pytest.mark.parametrize("extra, message", [
    (["--learning_rate", "fast"], "--learning_rate: expected a float, got 'fast'"),
    (["--max_seq_length", "1.5"], "--max_seq_length: expected an int"),
    (["--fp16", "maybe"], "--fp16 maybe: expected a boolean"),
    (["--learnin_rate", "1e-4"], "unknown flag (did you mean 'learning_rate'?)"),
    (["--lora", "1"], "--lora: ambiguous"),
    (["--attn_mode", "magic"], "--attn_mode magic: invalid choice"),
    (["--lora_init", "Houlsby", "--attn_option", "Qlora"], "the LoRA never trains"),
    (["--metric_for_best_model", "f1", "--load_best_model_at_end", "--evaluation_strategy", "epoch",
      "--save_strategy", "epoch"], "--metric_for_best_model f1"),
])
def test_bad_glue_flags_are_one_line_errors(extra, message):
    with pytest.raises(PeftlabError) as err:
        translate_command("run_glue.py", GLUE + extra, "cmd")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_glue_flags_parse_as_argparse_does():
    out = translate_command("run_glue.py", GLUE + ["--learning_rate=3e-4", "--max_steps", "-1", "--ddp_find_unused",
                                                   "False", "--learning_rate", "1e-4", "2>&1"], "cmd")
    assert out.config["train"]["learning_rate"] == 1e-4          # the last occurrence wins; 2>&1 is the shell's
    assert "--ddp_find_unused_parameters" in out.ignored and "--max_steps" in out.ignored


@pytest.mark.parametrize("change, message", [
    ({"label_smoth": 0.1}, "unknown key 'label_smoth' (did you mean 'label_smooth'?)"),
    ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
    ({"prefix_tuning": "reparameterization"}, "only 'landmark'"),
    ({"lora_ini": "He_s"}, "lora_ini He_s"),
    ({"gradient_accumulation_steps": 8}, "gradient_accumulation_steps 8"),
    ({"task": "qa"}, "CoQA"),
])
def test_bad_nlg_keys_are_one_line_errors(seeds, change, message):
    data = {**json.loads((NLG / "configs/inducer-lora.json").read_text()), **change}
    with pytest.raises(PeftlabError) as err:
        translate_nlg_json(data, "inducer-lora.json")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_py_needs_config_and_evaluate_py_its_json(seeds, tmp_path):
    with pytest.raises(PeftlabError, match="--config: required"):
        translate_command("train.py", ["--seed", "1"], "cmd", base_dir=NLG)
    with pytest.raises(PeftlabError, match="--sed: unknown flag"):
        translate_command("train.py", ["--config", "configs/baseline.json", "--sed", "1"], "cmd", base_dir=NLG)
    with pytest.raises(PeftlabError, match="file not found"):
        translate_command("train.py", ["--config", "configs/absent.json"], "cmd", base_dir=NLG)
    with pytest.raises(PeftlabError, match="JSON form"):
        translate_command("evaluate.py", ["--task", "webnlg"], "cmd", base_dir=NLG)
    out = translate_command("train.py", ["--config", "configs/baseline.json", "--max_norm", "0.5"], "cmd",
                            base_dir=NLG)
    assert out.config["train"]["max_grad_norm"] == 0.5          # a flag the JSON does not set (train.py:301-307)


def test_run_glue_sh_without_debug(seeds):
    """debug=0: 10 epochs on all of SST-2, weight decay 0.1 (not on the inducer's A_bias/B_bias), epoch evals."""
    text = (SEEDS / "nlu/scripts/run_glue.sh").read_text().replace("debug=1", "debug=0")
    out = _translate(_commands("nlu/scripts/run_glue.sh", text)[0], NLU)
    config = RunConfig.from_dict(out.config)
    train = config.train
    assert (train.epochs, train.weight_decay, train.eval_strategy, config.data.max_eval_samples) == (10.0, 0.1, "epoch",
                                                                                                     1600)
    assert train.warmup_steps == 2526 and config.data.max_train_samples is None   # ceil(0.06 x 10 x ceil(67349/16))
    assert train.param_groups == ({"pattern": r"\.(key|value)_[ab]$", "learning_rate": None, "weight_decay": 0.0},)
