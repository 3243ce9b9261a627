"""The seeds' own experiment files, run unchanged: each original becomes the same peftlab run config.

    translations = translate("seq2seq/configs/compacter.json")       # a config file
    translations = translate("nlu/scripts/run_glue.sh")              # every python command in a run script
    translations = translate(None, argv=["python", "runscript.py", "--task_config_path", "mrpc.json"])

Formats: Compacter's and ATTEMPT's `run_seq2seq.py` / `eval_seq2seq.py` JSON (seq2seq.py), kernel-adapters'
NLG JSON and `train.py` / `evaluate.py` / `run_glue.py` command lines (kernel.py), nlprunners'
`runscript.py` / `runscript_multi_adapter.py` command lines (nlprunners.py), run scripts (`*.sh`) and the
command blocks of a markdown file (shell.py). Every key and flag is translated, listed as ignored with
its reason, or refused in one line (docs/seed_configs.md).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PeftlabError
from . import kernel, kernel_glue, nlprunners
from .base import Translation
from .seq2seq import translate_seq2seq
from .shell import Command, command_from_argv, markdown_commands, python_commands

__all__ = ["Translation", "translate", "is_original", "translate_mapping", "code_root"]

SEQ2SEQ_SCRIPTS = {"run_seq2seq.py": False, "eval_seq2seq.py": True, "finetune_t5_trainer.py": False}
KERNEL_SCRIPTS = {"train.py", "evaluate.py", "run_glue.py"}
NLPRUNNERS_SCRIPTS = {"runscript.py", "runscript_multi_adapter.py"}
KERNEL_NLG_MARKERS = ("model_checkpoint", "n_epochs", "train_batch_size", "label_smooth")


def is_original(data: dict) -> bool:
    """A flat mapping in one of the seeds' JSON formats (not a peftlab run config)."""
    return any(key in data for key in ("model_name_or_path", "task_name", *KERNEL_NLG_MARKERS))


def translate_mapping(data: dict, source: str, root: Path | None = None) -> Translation:
    if any(key in data for key in KERNEL_NLG_MARKERS):
        return kernel.translate_nlg_json(data, source)
    return translate_seq2seq(data, source, root=root)


def translate(original, argv: list[str] | None = None) -> list[Translation]:
    """The translations of an original file (one per experiment it runs), or of one command line."""
    if argv:
        return [_command(command_from_argv(list(argv)), "the command line", Path.cwd())]
    path = Path(original)
    if not path.is_file():
        raise PeftlabError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return [translate_mapping(_read_json(path), str(path), code_root(path, "configs"))]
    text = _read_text(path)
    if suffix == ".sh":
        commands = python_commands(text, source=str(path))
    elif suffix == ".md":
        commands = markdown_commands(text, source=str(path))
    else:
        raise PeftlabError(f"{path}: not a seed original: expected a config .json, a run script .sh or a "
                           f"markdown file of command lines (.md), or a command after `--`")
    if not commands:
        raise PeftlabError(f"{path}: holds no python command line")
    root = code_root(path, "scripts") if suffix == ".sh" else Path.cwd()
    return [_command(c, f"{path}:{c.line}", root) for c in commands]


def _command(command: Command, source: str, root: Path) -> Translation:
    script = Path(command.script).name
    args = list(command.args)
    if script in SEQ2SEQ_SCRIPTS:
        if len(args) != 1 or not args[0].endswith(".json"):
            raise PeftlabError(f"{source}: {script} takes one JSON config file, got {' '.join(args) or 'nothing'}")
        path = Path(args[0]) if Path(args[0]).is_absolute() else root / args[0]
        if not path.is_file():
            raise PeftlabError(f"{source}: {args[0]}: file not found (looked in {root})")
        return translate_seq2seq(_read_json(path), f"{source} ({path})", root=code_root(path, "configs"),
                                 evaluate_only=SEQ2SEQ_SCRIPTS[script])
    if script in KERNEL_SCRIPTS:
        return kernel_glue.translate_command(command.script, args, source, command.processes, base_dir=root)
    if script in NLPRUNNERS_SCRIPTS:
        return nlprunners.translate_command(command.script, args, source, command.processes)
    known = sorted({*SEQ2SEQ_SCRIPTS, *KERNEL_SCRIPTS, *NLPRUNNERS_SCRIPTS})
    raise PeftlabError(f"{source}: '{command.script}' is not a script of the four code bases ({', '.join(known)})")


def code_root(path: Path, folder: str) -> Path:
    """The code base's working directory: the parent of the `configs` (or `scripts`) folder holding the file."""
    for parent in path.resolve().parents:
        if parent.name == folder:
            return parent.parent
    return path.resolve().parent


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PeftlabError(f"{path}: not a text file") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise PeftlabError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise PeftlabError(f"{path}: expected a JSON object of config keys")
    return data
