"""Every original of the four seed code bases (../shared/seed-configs): it translates with no key dropped,
builds on its own architecture (meta device) exactly the trainable count its code builds, and trains one
step on a tiny model. Bad originals get one line, exit 2, and write nothing."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from peftlab.cli import main
from peftlab.seeds import translate
from peftlab.seeds.shell import markdown_commands, python_commands
from peftlab.train.modeling import count_run
from peftlab.train.schema import RunConfig, apply_overrides
from test_train_support import tiny_model_dir, write_task_files

SEEDS = Path(__file__).resolve().parents[1].parent / "shared" / "seed-configs"
DOC = Path(__file__).resolve().parents[1] / "docs" / "seed_configs.md"


def originals() -> list[tuple[str, int]]:
    """(original file relative to seed-configs, index of the experiment in it)."""
    if not SEEDS.is_dir():
        return []
    out = []
    for path in sorted(SEEDS.rglob("*")):
        if path.suffix in (".json", ".sh") or path.name == "adapters.md":
            relative = str(path.relative_to(SEEDS))
            if path.suffix == ".json":
                count = 1
            elif path.suffix == ".sh":
                count = len(python_commands(path.read_text(), variables={}, source=str(path)))
            else:
                count = len(markdown_commands(path.read_text(), str(path)))
            out += [(relative, i) for i in range(count)]
    return out


@pytest.fixture(autouse=True)
def _nlprunners_weights(tmp_path_factory, monkeypatch):
    """adapters.md's multi-adapter reads ${NLPR_ADAPTER_DIR}/configs/adapter_weights.json: give it one,
    pointing at model.p stand-ins (RoBERTa-base shapes are not needed to translate)."""
    base = tmp_path_factory.mktemp("nlpr-base")
    folder = base / "working" / "adapters"        # adapters.md: export NLPR_ADAPTER_DIR=${NLPR_BASE_DIR}/working/adapters/
    (folder / "configs").mkdir(parents=True)
    weights = {task: str(folder / "single" / task / "model.p") for task in ("rte", "mrpc")}
    (folder / "configs" / "adapter_weights.json").write_text(json.dumps(weights))
    monkeypatch.setenv("NLPR_BASE_DIR", str(base))


def _documented_counts() -> dict[str, int]:
    """docs/seed_configs.md: `| original | ... | count |` rows; the count is the last number of the row."""
    counts = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`") and re.fullmatch(r"\*\*[\d,]+\*\*", cells[3]):
            counts[cells[0].strip("`")] = int(cells[3].strip("*").replace(",", ""))
    return counts


def _key(relative: str, index: int) -> str:
    return relative if relative.endswith(".json") else f"{relative}#{index + 1}"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seed-configs is absent")
@pytest.mark.parametrize("relative, index", originals())
def test_an_original_builds_the_count_its_code_builds(relative, index, tmp_path):
    translation = translate(SEEDS / relative)[index]
    assert translation.code_base in ("compacter", "attempt", "kernel-adapters", "nlprunners")
    config = RunConfig.from_dict(_stand_in_files(translation.config, tmp_path, width=None))
    documented = _documented_counts()
    key = _key(relative, index)
    assert key in documented, f"docs/seed_configs.md has no row for {key}"
    assert count_run(config)[0] == documented[key]


def _stand_in_files(config: dict, tmp_path: Path, width: int | None) -> dict:
    """Released files the seeds' configs name but that are not here (ATTEMPT's source prompts and
    outputs, nlprunners' model.p) replaced by random tensors of the right shapes."""
    config = json.loads(json.dumps(config))
    if config.get("init_from") and not os.path.exists(config["init_from"]):
        config.pop("init_from")       # the trained run an evaluation reads is not here: evaluate a fresh one
    method = config["method"]
    d = width or _hidden_size(config["model"]["name"])
    for key in ("sources", "target_files"):
        if isinstance(method.get(key), list):
            method[key] = [p if os.path.exists(p) and width is None else _tensor(tmp_path, p, (100, d))
                           for p in method[key]]
    for key in ("layers", "encoder_layers", "decoder_layers"):
        if width and method.get(key):      # AdapterDrop's layers 5-11 of 12: the upper of the tiny 2
            method[key] = [1]
    if method.get("method") == "weighted_sum" and isinstance(method.get("sources"), dict):
        method["sources"] = {name: _model_p(tmp_path / f"{name}.p", d) for name in method["sources"]}
    if method.get("attn_init"):
        method["attn_init"] = [_tensor(tmp_path, "down.pt", (100, d)), _tensor(tmp_path, "up.pt", (d, 100))]
    if method.get("layer_norm_init"):
        folder = tmp_path / "layer_norm"
        folder.mkdir(exist_ok=True)
        torch.save(torch.ones(d), folder / "layer_norm_weight.pt")
        torch.save(torch.zeros(d), folder / "layer_norm_bias.pt")
        method["layer_norm_init"] = str(folder)
    return config


def _hidden_size(model: str) -> int:
    from peftlab.models import load_config
    hf = load_config(model)
    return getattr(hf, "d_model", None) or getattr(hf, "n_embd", None) or hf.hidden_size


def _tensor(tmp_path: Path, name: str, shape) -> str:
    path = tmp_path / f"{len(list(tmp_path.glob('*.pt')))}-{Path(name).name}"
    path = path.with_suffix(".pt")
    torch.save(torch.randn(*shape), path)
    return str(path)


def _model_p(path: Path, d: int, layers: int | None = None, size: int = 64, labels: int = 2) -> str:
    """A stand-in for nlprunners' model.p (runscript.py:171-178) of a RoBERTa of width d."""
    layers = layers or (12 if d == 768 else 2)
    out = {}
    for i in range(layers):
        for sub in ("attention.output", "output"):
            prefix = f"roberta.encoder.layer.{i}.{sub}"
            out[f"{prefix}.adapter.down_project.weight"] = torch.randn(size, d) * 0.01
            out[f"{prefix}.adapter.down_project.bias"] = torch.zeros(size)
            out[f"{prefix}.adapter.up_project.weight"] = torch.randn(d, size) * 0.01
            out[f"{prefix}.adapter.up_project.bias"] = torch.zeros(d)
            out[f"{prefix}.LayerNorm.weight"] = torch.ones(d)
            out[f"{prefix}.LayerNorm.bias"] = torch.zeros(d)
    out["roberta.embeddings.LayerNorm.weight"], out["roberta.embeddings.LayerNorm.bias"] = torch.ones(d), torch.zeros(d)
    out["classifier.dense.weight"], out["classifier.dense.bias"] = torch.randn(d, d) * 0.02, torch.zeros(d)
    out["classifier.out_proj.weight"], out["classifier.out_proj.bias"] = torch.randn(labels, d) * 0.02, torch.zeros(labels)
    torch.save(out, path)
    return str(path)


ARCH = {"compacter": "t5", "attempt": "t5", "nlprunners": "roberta"}
TINY_WIDTH = 384    # 384 / 32 = 12: Compacter's reduction factor 32 with PHM n = 4 or 12 fits


def _arch(translation) -> str:
    if translation.code_base == "kernel-adapters":
        return "gpt2" if "gpt2" in str(translation.config["model"]["name"]) else "roberta"
    return ARCH[translation.code_base]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_task_files(tmp_path_factory.mktemp("seed-data"))


@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seed-configs is absent")
@pytest.mark.parametrize("relative, index", originals())
def test_an_original_trains_one_step_on_a_tiny_model(relative, index, tmp_path, tiny_data):
    from peftlab.train.loop import Trainer
    translation = translate(SEEDS / relative)[index]
    arch = _arch(translation)
    model_dir = tiny_model_dir(arch, tmp_path.parent / "seed-models", width=TINY_WIDTH)
    config = _stand_in_files(translation.config, tmp_path, width=TINY_WIDTH)
    # the tiny vocabulary (256), grown by 16 rows where the original trains new token rows (kernel NLG)
    grow = translation.config["model"].get("train_new_embeddings")
    tokens = translation.config.get("data", {}).get("text_compat") == "kernel-adapters"   # + the code's 15 tokens
    overrides = [f"model.name={model_dir}", f"model.resize_vocab={272 if grow or tokens else 'null'}",
                 "model.max_length=24",
                 "model.max_target_length=4", f"data.dir={tiny_data}", "data.splits=official",
                 "data.max_train_samples=8", "data.max_eval_samples=4", "train.max_steps=1", "train.batch_size=4",
                 "train.gradient_accumulation_steps=1", "train.eval_batch_size=4", "train.eval_strategy=no",
                 "train.progress_bar=false", "train.tensorboard=false", "train.warmup_steps=0",
                 f"output_dir={tmp_path / 'run'}"]
    run = RunConfig.from_dict(apply_overrides(config, overrides))
    trainer = Trainer(run)
    embedding = trainer.model.get_input_embeddings().weight
    before = embedding.detach().clone()
    results = trainer.run()
    assert results["train"]["steps"] == (1 if run.do_train else 0)
    if grow and run.do_train:       # only the 16 added rows moved (train.py:438-444)
        moved = (embedding.detach() != before).any(dim=1)
        assert not moved[:256].any() and moved[256:].any()
    assert set(results["tasks"]) == set(run.tasks)


class Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def _run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_a_file_in_none_of_the_formats_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "experiment.txt"
    path.write_text("lr = 3e-4\n")
    code, err = _run_cli(["train", str(path), f"output_dir={tmp_path / 'out'}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a seed original" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.txt"]


def test_a_flag_with_a_wrong_type_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run_cli(["train", "--", "python", "runscript.py", "--task_config_path", "rte.json",
                          "--ZZsrc", "models/roberta-base/config.json",
                          "--output_dir", "out", "--train_batch_size", "four"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--train_batch_size" in err
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_file_holding_code_is_refused_and_nothing_is_written(tmp_path, capsys):
    evil = tmp_path / "prompt.pt"
    torch.save(Evil(), evil)
    seed = {"model_name_or_path": "t5-base", "task_name": ["rte"], "do_train": True, "prefix_tuning": True,
            "load_prefix_embeddings": True, "prompt_embedding_path": [str(evil)], "output_dir": str(tmp_path / "out")}
    path = tmp_path / "spot.json"
    path.write_text(json.dumps(seed))
    data = write_task_files(tmp_path / "data")
    model = tiny_model_dir("t5", tmp_path / "models")
    capsys.readouterr()
    code, err = _run_cli(["train", str(path), f"model.name={model}", "model.resize_vocab=null",
                          f"data.dir={data}", "data.splits=official"], capsys)
    assert code == 2 and err.count("\n") == 1 and "refused: not a file of tensors only" in err
    assert not (tmp_path / "out").exists()


def test_translate_prints_each_line_with_its_original_key(tmp_path, capsys):
    seed = {"model_name_or_path": "t5-base", "task_name": ["rte"], "do_train": True, "learning_rate": 3e-4,
            "save_total_limit": 1}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(seed))
    assert main(["translate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "learning_rate: 0.0003  # learning_rate" in out and "#   save_total_limit: disk use only" in out
