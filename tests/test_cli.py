"""`peftlab train | eval | predict | plot` end to end on a tiny model, and bad input -> one line, exit 2."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftlab.cli import main
from test_train_support import tiny_run_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (BERT, SST-2 files in the official format), trained through the CLI."""
    tmp = tmp_path_factory.mktemp("cli")
    path = tmp / "run.yaml"
    path.write_text(json.dumps(tiny_run_config(tmp)))       # JSON is valid YAML
    assert main(["train", str(path), "train.seed=5"]) == 0
    return tmp


def test_train_prints_the_result_table_and_writes_the_run(trained, capsys):
    run_dir = trained / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["train"]["seed"] == 5
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"loss.png", "metrics.png"}
    assert results["tasks"]["sst2"]["test"]["accuracy"] >= 0


def test_eval_reproduces_the_runs_test_scores(trained, capsys):
    results = json.loads((trained / "run" / "results.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(trained / "run")]) == 0
    out = capsys.readouterr().out
    accuracy = 100 * results["tasks"]["sst2"]["test"]["accuracy"]
    assert f"sst2     test        accuracy  {accuracy:9.2f}" in out


def test_eval_on_a_given_file(trained, capsys):
    data = trained / "data" / "glue" / "SST-2" / "dev.tsv"
    assert main(["eval", str(trained / "run"), "--data", str(data), "--task", "sst2"]) == 0
    import re
    assert re.search(r"sst2\s+data\s+accuracy\s+\d+\.\d\d", capsys.readouterr().out)
    assert main(["eval", str(trained / "run"), "--data", str(data), "--task", "cola"]) == 2
    assert "task 'cola' was not trained in this run" in capsys.readouterr().err


def test_predict_writes_one_prediction_per_row(trained, tmp_path):
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"sentence": "the film is good"}\n{"sentence": "a dull plot"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(trained / "run"), "--input", str(rows), "--output", str(out)]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["sentence"] for p in predictions] == ["the film is good", "a dull plot"]
    assert all(p["prediction"] in ("negative", "positive") for p in predictions)   # SST-2 names its labels
    dev = trained / "data" / "glue" / "SST-2" / "dev.tsv"          # the official format works too
    assert main(["predict", str(trained / "run"), "--input", str(dev), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 12


def test_plot_lists_the_pngs(trained, capsys):
    assert main(["plot", str(trained / "run")]) == 0
    assert "loss.png" in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err        # may hold the tiny model fixture's save progress bar too
    lines = [line for line in err.splitlines() if line.startswith("peftlab ")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("train_bytes, expected", [
    (None, "SST-2/train.tsv: file not found"),
    (b"text\tlabel\nok\t1\n", "SST-2/train.tsv: missing column 'sentence'"),
    (b"sentence\tlabel\nok\t1\nfine\t7\n", "SST-2/train.tsv:3: unknown label '7' for sst2"),
    (b"sentence\tlabel\n", "SST-2/train.tsv: no examples (empty split)"),
    (b"sentence\tlabel\nok\t1\nok\t1\n\xe9t\xe9\t0\n", "SST-2/train.tsv:4: not UTF-8 text"),
])
def test_bad_data_exits_2_with_one_line_naming_the_file(tmp_path, capsys, train_bytes, expected):
    config = tiny_run_config(tmp_path)
    train = Path(config["data"]["dir"]) / "glue" / "SST-2" / "train.tsv"
    if train_bytes is None:
        train.unlink()
    else:
        train.write_bytes(train_bytes)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path)]) == 2
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "run" / "config.json").exists()          # failed before the run started


def test_config_errors_exit_2(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("tasks: [sst2]\ntrian: {epochs: 1}\n")
    assert main(["train", str(path)]) == 2
    assert "unknown config key 'trian' (did you mean 'train'?)" in _one_line_error(capsys)
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: file not found" in _one_line_error(capsys)
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in _one_line_error(capsys)


def test_non_finite_loss_exits_2_naming_the_step(tmp_path, capsys):
    config = tiny_run_config(tmp_path, method={"method": "full"},
                             train={"learning_rate": 1e30, "max_grad_norm": None, "eval_steps": 1, "epochs": 3})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path)]) == 2
    assert "at step" in _one_line_error(capsys)


def _smaller_vocab_model(tmp_path, source):
    import transformers as tf
    model = tf.AutoModel.from_pretrained(source)
    model.resize_token_embeddings(200)
    out = tmp_path / "small-vocab"
    model.save_pretrained(out)
    tf.AutoTokenizer.from_pretrained(source).save_pretrained(out)     # 256 tokens for 200 rows
    return out


def _truncated_model(tmp_path, source):
    import shutil
    out = tmp_path / "truncated"
    shutil.copytree(source, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return out


@pytest.mark.parametrize("make, message", [
    (lambda tmp, model: ["model.head=seq2seq"], "model.head seq2seq: .* is a bert encoder without that kind of head"),
    (lambda tmp, model: ["model.head=causal"], "model.head causal: .* is a bert encoder"),
    (lambda tmp, model: ["model=tiny"], "model: expected a mapping, got 'tiny'"),
    (lambda tmp, model: ["method.decoder_layers=[0]"], "decoder_layers: this model has no decoder stack"),
    (lambda tmp, model: ["method.bottleneck_size=100000000000"], "Houlsby: its tensors do not fit in memory"),
    (lambda tmp, model: [f"model.name={_smaller_vocab_model(tmp, model)}"], "the tokenizer has 256 tokens but the "
                                                                           "model's embedding 200 rows"),
    (lambda tmp, model: [f"model.name={_truncated_model(tmp, model)}"], "cannot load model .*truncated"),
])
def test_bad_runner_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, make, message):
    from test_train_support import tiny_run_config
    config = tiny_run_config(tmp_path, train={"max_steps": 1, "eval_strategy": "no"})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    overrides = make(tmp_path, config["model"]["name"])
    capsys.readouterr()
    code = main(["train", str(path), f"output_dir={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and re.search(message, err[-1]), err
    assert not (tmp_path / "out").exists()


# a "billion laughs" under the alias limit: 72 aliases, 9 levels of 9, 387 million strings expanded
LAUGHS = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ['"lol"'] * 9) + "]\n" for i in range(9))


@pytest.mark.parametrize("name, text, message", [
    ("laughs.yaml", "tasks: [sst2]\n" + LAUGHS, r"laughs\.yaml: line \d+: the YAML expands to more than 100,000"),
    ("big.json", '{"tasks": ["sst2"], "train": {"seed": ' + "9" * 5000 + "}}", r"big\.json: not readable \(ValueError"),
    ("big.yaml", "tasks: [sst2]\ntrain: {seed: " + "9" * 5000 + "}\n", r"big\.yaml: not a readable value \(ValueError"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: not readable \(RecursionError"),
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", r"deep\.yaml: not a readable value \(RecursionError"),
])
def test_hostile_config_files_exit_2_in_one_line_at_once(tmp_path, capsys, name, text, message):
    import time
    path = tmp_path / name
    path.write_text(text)
    started = time.perf_counter()
    assert main(["train", str(path)]) == 2
    assert re.search(message, _one_line_error(capsys))
    assert time.perf_counter() - started < 10        # the laughs used to expand until memory ran out


def _no_hang(seconds: int):
    import signal

    def hung(*_):
        raise TimeoutError("hung")
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)


@pytest.mark.parametrize("which", ["config", "data"])
def test_a_fifo_in_place_of_the_config_or_a_data_file_is_refused_without_waiting(tmp_path, capsys, which):
    import os
    import signal
    config = tiny_run_config(tmp_path)
    path = tmp_path / "run.yaml"
    if which == "config":
        os.mkfifo(path)
    else:
        train = Path(config["data"]["dir"]) / "glue" / "SST-2" / "train.tsv"
        train.unlink()
        os.mkfifo(train)
        path.write_text(json.dumps(config))
    _no_hang(20)
    try:
        assert main(["train", str(path)]) == 2
    finally:
        signal.alarm(0)
    expected = "run.yaml" if which == "config" else "SST-2/train.tsv"
    assert f"{expected}: not a regular file" in _one_line_error(capsys)


def test_adam_betas_of_the_wrong_length_exit_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(tiny_run_config(tmp_path)))
    assert main(["train", str(path), "train.adam_betas=[0.9]"]) == 2
    assert "train.adam_betas: expected 2 values, got [0.9]" in _one_line_error(capsys)
