"""Attack 1: generated runner configs. Each case mutates a tiny valid run config (BERT / T5 / GPT-2, 1-2
steps) with values drawn from the per-field lists of attack_values.py, or attacks the config file, the
data files or a previous run folder, and runs `peftlab.cli.main(["train", ...])` in a forked process
with a fresh current folder and a time limit. Files that existed before an invalid run must be intact."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import yaml

from attack_common import cli_verdict, isolated, lost, outcome_of, record, settle, snapshot
from attack_fixtures import base_run_config, broken_model, copy_run
from attack_values import (ALIAS_BOMB, ARCH_HEAD, ARCH_TASK, DATA_ATTACKS, FILE_ATTACKS, RUN_ATTACKS, SECTIONS,
                           UNKNOWN, WRONG_HEAD)

MARKER = "peftlab-run.json"      # rewritten (pid, time) by every run that takes a folder
FINDING_8 = [   # the finding 8, each an invalid input that must be one line
    ("bert", {"train.param_groups": [{"pattern": "adapter", "learning_rate": -0.01}]}),
    ("bert", {"train.learning_rate": 0}), ("bert", {"train.warmup_steps": -1}),
    ("bert", {"train.weight_decay": -1}), ("bert", {"train.early_stopping_patience": -1}),
    ("bert", {"method": {"method": "houlsby", "scaling": 0}}), ("gpt2", {"method": {"method": "lora", "alpha": 0}}),
    ("bert", {"method": {"method": "houlsby", "drop_max_layers": 100}}),
    ("bert", {"method": {"method": "houlsby", "decoder_layers": [0]}}), ("bert", {"model.head": "causal"}),
    ("bert", {"method": {"method": "phm_adapter", "phm_init_range": 1e12}}), ("bert", {"train.seed": -1}),
    ("bert", {"train.learning_rate": -0.01}), ("bert", {"model.head": "seq2seq"}),
    ("bert", {"model.name": "@small_vocab"}), ("bert", {"model.name": "@truncated"}),
    ("t5", {"method": {"method": "houlsby", "bottleneck_size": 10**11}}),
    ("bert", {"output_dir": ""}), ("bert", {"output_dir": "."}), ("bert", {"output_dir": "@foreign"}),
]


def generate(count: int, seed: int) -> list[dict]:
    """`count` cases: the fixed ones (finding 8, file, data and run-folder attacks, unknown keys), then
    random mutations of one or two fields, each drawn valid or invalid at even odds."""
    cases = [{"arch": arch, "set": dict(s), "expect": "invalid", "why": "finding 8"} for arch, s in FINDING_8]
    cases += [{"arch": "bert", "file": kind, "expect": "invalid"} for kind in FILE_ATTACKS]
    cases += [{"arch": "bert", "data": kind, "expect": "invalid"} for kind in DATA_ATTACKS]
    cases += [{"arch": "bert", "run": kind, "expect": "invalid"} for kind in RUN_ATTACKS]
    cases += [{"arch": "bert", "unknown": key, "expect": "invalid"} for key in UNKNOWN]
    rng = random.Random(seed)
    while len(cases) < count:
        cases.append(_random_case(rng))
    for case in cases:
        case.setdefault("delivery", "file")
    return cases[:count]


def _random_case(rng: random.Random) -> dict:
    arch = rng.choice(["bert", "bert", "t5", "gpt2"])
    fields = [(section, name) for section, table in SECTIONS.items() for name in table]
    chosen, expect = {}, "valid"
    for section, name in rng.sample(fields, rng.choice([1, 1, 2])):
        valid, invalid = SECTIONS[section][name]
        bad = rng.random() < 0.5
        value = rng.choice(invalid if bad else valid)
        chosen[f"{section}.{name}".lstrip(".")] = value
        expect = "invalid" if bad else expect
    delivery = rng.choice(["file", "file", "override"])
    return {"arch": arch, "set": chosen, "expect": expect, "delivery": delivery}


# --- building a case ----------------------------------------------------------------------------------

def resolve(value, arch: str, case_dir: Path, shared: dict):
    """Replace the `@` tokens of attack_values.py by the paths and names they stand for."""
    if isinstance(value, list):
        return [resolve(v, arch, case_dir, shared) for v in value]
    if isinstance(value, dict):
        return {resolve(k, arch, case_dir, shared): resolve(v, arch, case_dir, shared) for k, v in value.items()}
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    token = value[1:]
    simple = {"task": ARCH_TASK[arch], "head": ARCH_HEAD[arch], "model": str(shared["models"][arch]),
              "data": str(shared["data"]), "fresh": str(case_dir / "run"), "cwd": str(case_dir / "cwd"),
              "missing": str(case_dir / "not-there"), "wrong_head": WRONG_HEAD[arch][0]}
    if token in simple:
        return simple[token]
    if token == "foreign":
        (case_dir / "mine" / "adapter" / "mywork").mkdir(parents=True, exist_ok=True)
        (case_dir / "mine" / "adapter" / "mywork" / "weights.bin").write_bytes(b"the user's own work")
        (case_dir / "mine" / "results.json").write_text("{}")
        return str(case_dir / "mine")
    if token == "file":
        (case_dir / "a-file.txt").write_text("not a folder")
        return str(case_dir / "a-file.txt")
    if token == "empty":
        (case_dir / "empty").mkdir(exist_ok=True)
        return str(case_dir / "empty")
    return str(broken_model(token, shared["models"][arch], case_dir))


def _put(config: dict, dotted: str, value) -> None:
    node, parts = config, dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _yaml_text(value) -> str:
    """A value as the right-hand side of a `key=value` override (read as YAML)."""
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and abs(value) == float("inf"):
        return ".inf" if value > 0 else "-.inf"
    return json.dumps(value)


def build(case: dict, case_dir: Path, shared: dict) -> tuple[list[str], bool]:
    """Write the case's config (and broken files) under `case_dir`; (argv, whether it is a resume)."""
    arch = case["arch"]
    config = base_run_config(shared, arch, case_dir / "run")
    overrides, resume = [], False
    for dotted, value in case.get("set", {}).items():
        value = resolve(value, arch, case_dir, shared)
        if case.get("delivery") == "override":
            overrides.append(f"{dotted}={_yaml_text(value)}")
        else:
            _put(config, dotted, value)
    if "unknown" in case:
        _put(config, case["unknown"], 1)
    if "data" in case:
        config["data"]["dir"] = str(_broken_data(case["data"], shared, case_dir))
    if "run" in case:
        overrides, resume = _prior_run(case["run"], config, shared, case_dir)
    path = case_dir / ("run.yaml" if case.get("delivery") == "override" else "run.json")
    if "file" in case:
        path, overrides = _file_attack(case["file"], config, case_dir)
    elif path.suffix == ".json":
        path.write_text(json.dumps(config))
    else:
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ["train", str(path), *overrides, *(["--resume"] if resume else [])], resume


def _file_attack(kind: str, config: dict, case_dir: Path) -> tuple[Path, list[str]]:
    path = case_dir / "run.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    overrides: list[str] = []
    if kind == "duplicate_key":
        text = text.replace("train:\n", "train:\n  seed: 1\n  seed: 2\n", 1)
    elif kind == "alias_bomb":
        text = ALIAS_BOMB + text
    elif kind == "python_name":
        text += "description: !!python/name:os.system\n"
    elif kind == "python_apply":
        text += "description: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n"
    elif kind == "list_top":
        text = "- tasks: [sst2]\n- train: {}\n"
    elif kind == "empty":
        text = ""
    elif kind == "bad_syntax":
        text = text.replace("train:\n", "train: [unclosed\n", 1)
    elif kind == "tab_indent":
        text = text.replace("\n  ", "\n\t", 1)
    elif kind == "deep_nesting":
        text += "description: " + "[" * 5000 + "]" * 5000 + "\n"
    elif kind == "huge_int_json":
        path, text = case_dir / "run.json", json.dumps(config).replace('"seed": 3', '"seed": ' + "9" * 5000)
    elif kind == "json_garbage":
        path, text = case_dir / "run.json", json.dumps(config) + "}{ trailing"
    elif kind == "nan_json":
        config["train"]["learning_rate"] = float("nan")      # json.dumps writes NaN, which json.loads reads
        path, text = case_dir / "run.json", json.dumps(config)
    elif kind == "override_no_equals":
        overrides = ["train.learning_rate"]
    elif kind == "override_section_scalar":
        overrides = ["train=5"]
    elif kind == "model_tiny":
        overrides = ["model=tiny"]
    if kind == "missing":
        return case_dir / "nothing.yaml", overrides
    if kind == "is_dir":
        (case_dir / "adir.yaml").mkdir()
        return case_dir / "adir.yaml", overrides
    if kind == "fifo":
        os.mkfifo(path)
        return path, overrides
    path.write_bytes(b"description: caf\xe9\n" + text.encode() if kind == "not_utf8" else text.encode())
    return path, overrides


def _broken_data(kind: str, shared: dict, case_dir: Path) -> Path:
    root = case_dir / "data"
    shutil.copytree(shared["data"], root, symlinks=True)
    train = root / "glue" / "SST-2" / "train.tsv"
    if kind == "data_dir_file":
        shutil.rmtree(root)
        root.write_text("a file")
    elif kind == "missing_train":
        train.unlink()
    elif kind == "empty_train":
        train.write_bytes(b"")
    elif kind == "fifo_train":
        train.unlink()
        os.mkfifo(train)
    elif kind == "not_utf8":
        train.write_bytes(b"sentence\tlabel\n\xe9t\xe9\t0\n")
    elif kind == "bad_label":
        train.write_bytes(b"sentence\tlabel\nok\t7\n")
    elif kind == "train_is_dir":
        train.unlink()
        train.mkdir()
    elif kind == "missing_column":
        train.write_bytes(b"text\tlabel\nok\t1\n")
    elif kind == "short_row":
        train.write_bytes(b"sentence\tlabel\nok\n")
    return root


def _prior_run(kind: str, config: dict, shared: dict, case_dir: Path) -> tuple[list[str], bool]:
    """A finished run of the user's in `case_dir/run`, and the invalid way this case starts into it."""
    run = copy_run(shared["finished_run"], case_dir / "run")
    if kind == "run_without_checkpoints":
        shutil.rmtree(run / "checkpoints")
        return ["train.seed=7"], False
    if kind == "run_overwrite_bad_config":
        return ["overwrite=true", "method.reduction_factor=-1"], False
    if kind == "run_resume_changed_config":
        return ["train.learning_rate=0.5"], True
    if kind == "run_resume_nothing":
        shutil.rmtree(run)
        run.mkdir()
        return [], True
    other = copy_run(shared["finished_run"], case_dir / "other")   # run_symlinked_last: into another run
    shutil.rmtree(run / "checkpoints" / "last")
    (run / "checkpoints" / "last").symlink_to(other / "checkpoints" / "last")
    return [], True


# --- running ------------------------------------------------------------------------------------------

def _train(argv: list[str], cwd: str) -> dict:
    from peftlab.cli import main
    os.chdir(cwd)
    return {"code": main(argv)}


def run_case(number: int, case: dict, shared: dict, timeout: float) -> dict:
    case_dir = Path(shared["work"]) / "configs" / f"case-{number:03d}"
    (case_dir / "cwd").mkdir(parents=True)
    (case_dir / "cwd" / "notes.txt").write_text("the user's file in the current folder")
    argv, _ = build(case, case_dir, shared)
    before = snapshot(case_dir, skip=("run/" + MARKER, "other/" + MARKER))
    result = isolated(_train, argv, str(case_dir / "cwd"), timeout=timeout)
    verdict, message = cli_verdict(result)
    after = snapshot(case_dir, skip=("run/" + MARKER, "other/" + MARKER))
    changed = lost(before, after) if verdict == "refused" else None
    if verdict == "ok" and case["expect"] == "valid" and not _finished(case_dir / "run"):
        verdict, message = "silent_garbage", "exit 0 without results.json in the run folder"
    if (case_dir / "cwd" / "pwned.txt").exists():
        verdict, message = "silent_garbage", "the config ran a shell command"
    kind, message = settle(case["expect"], verdict, message, changed)
    shown = {**case, "argv": argv[2:]} if len(" ".join(argv)) < 600 else case
    out = record("runner configs", number, shown, (kind, message), result["seconds"], outcome_of(result))
    if kind in ("ok", "refused"):
        shutil.rmtree(case_dir, ignore_errors=True)     # keep only what a finding needs to be looked at
    return out


def _finished(run: Path) -> bool:
    return (run / "results.json").is_file() and (run / "checkpoints" / "last" / "trainer_state.json").is_file()
