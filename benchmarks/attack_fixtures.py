"""What the attack starts from: tiny random models saved like hub checkpoints, tiny task files, a valid
run config per architecture, a finished run, and broken copies of a model folder. Built once per attack
under its work folder (nothing is downloaded)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from attack_values import ARCH_TASK

ARCHS = ("bert", "t5", "gpt2")


def base_run_config(shared: dict, arch: str, output_dir: Path, **train) -> dict:
    """A valid run of 2 steps, evaluated and checkpointed once, on the tiny `arch` model."""
    return {"tasks": [ARCH_TASK[arch]], "method": {"method": "houlsby", "reduction_factor": 4},
            "output_dir": str(output_dir),
            "model": {"name": str(shared["models"][arch]), "max_length": 24, "max_target_length": 4},
            "data": {"dir": str(shared["data"]), "splits": "official", "max_eval_samples": 4},
            "train": {"epochs": 1, "max_steps": 2, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 1e-2,
                      "eval_strategy": "steps", "eval_steps": 2, "log_steps": 1, "tensorboard": False,
                      "progress_bar": False, "seed": 3, **train}}


def setup(work: Path) -> dict:
    """Models, data and a finished BERT run under `work` (each built by a forked process, so that the
    harness itself never trains)."""
    from attack_common import isolated
    from test_train_support import tiny_model_dir, write_task_files
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    shared = {"work": str(work), "data": str(work / "data"),
              "models": {arch: str(tiny_model_dir(arch, work / "models")) for arch in ARCHS}}
    write_task_files(work / "data")
    run = work / "finished-run"
    config = work / "finished-run.json"
    config.write_text(json.dumps(base_run_config(shared, "bert", run)))
    result = isolated(_train, ["train", str(config)], timeout=300)
    if result["status"] != "returned" or result["value"]["code"] != 0:
        raise RuntimeError(f"the attack's base run failed: {result}")
    shared["finished_run"] = str(run)
    shared["finished_config"] = str(config)
    return shared


def _train(argv: list[str]) -> dict:
    from peftlab.cli import main
    return {"code": main(argv)}


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a run folder that is a run of its own: its recorded output_dir is the copy's."""
    shutil.copytree(source, target, symlinks=True)
    saved = target / "config.json"
    config = json.loads(saved.read_text())
    config["output_dir"] = str(target)
    saved.write_text(json.dumps(config, indent=2))
    return target


def config_for(shared: dict, run: Path, case_dir: Path, **train) -> Path:
    """The finished run's config file, pointed at `run` (its copy), with `train` changed."""
    config = json.loads(Path(shared["finished_config"]).read_text())
    config["output_dir"] = str(run)
    config["train"].update(train)
    path = case_dir / "run.json"
    path.write_text(json.dumps(config))
    return path


def broken_model(kind: str, source: str, case_dir: Path) -> Path:
    """A copy of the model folder `source`, broken the way `kind` says."""
    out = Path(case_dir) / f"model-{kind}"
    if out.exists():
        return out
    if kind == "small_vocab":      # the tokenizer (256 tokens) is larger than the embedding (200 rows)
        import transformers as tf
        model = tf.AutoModel.from_pretrained(source)
        model.resize_token_embeddings(200)
        model.save_pretrained(out)
        tf.AutoTokenizer.from_pretrained(source).save_pretrained(out)
        return out
    shutil.copytree(source, out)
    if kind == "truncated":
        weights = out / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "no_config":
        (out / "config.json").unlink()
    else:
        raise KeyError(kind)
    return out
