"""GLUE, SuperGLUE, ATTEMPT's other tasks (PAWS, WinoGrande, SciTail, Yelp polarity), E2E NLG and WebNLG:
readers for the official files, text formats, splits, metrics.

    task = get_task("sst2")
    splits = load_splits(task, "/work/shared/data")     # {"train", "validation", "test"} -> [Example]
    compute_metrics(task, predictions, splits["test"])

A data directory may be the benchmark's parent (`data/` holding `glue/SST-2/`), the benchmark folder
(`data/glue`), or the task's own folder (`data/glue/SST-2`); the folder an official archive unpacks to
works too (`data/others/SciTailV1.1/tsv_format`). With no directory, the task is read from the Hugging
Face hub through `datasets` (needs network and `pip install datasets`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import closest
from ..errors import PeftlabError
from .base import (SEQ2SEQ_LARGE, SEQ2SEQ_SMALL, Example, Task, collapse_references, load_rows, paper_splits,
                   seq2seq_splits)
from .e2e import E2E_TASK
from .glue import GLUE_TASKS
from .hub import read_hub_split
from .metrics import average, compute_metrics
from .others import FOLDERS as OTHER_FOLDERS, OTHER_TASKS
from .superglue import SUPERGLUE_TASKS
from .webnlg import FOLDERS as WEBNLG_FOLDERS, WEBNLG_TASK

TASKS: dict[str, Task] = {t.name: t for t in (*GLUE_TASKS, *SUPERGLUE_TASKS, *OTHER_TASKS, E2E_TASK, WEBNLG_TASK)}
# more folder names a task's files may sit in: those the official archives unpack to
EXTRA_FOLDERS: dict[str, tuple[str, ...]] = {**OTHER_FOLDERS, WEBNLG_TASK.name: WEBNLG_FOLDERS}
_ALIASES = {alias: t.name for t in TASKS.values() for alias in (t.name, *t.aliases)}
SPLIT_POLICIES = ("paper", "official", "seq2seq")

__all__ = ["Example", "Task", "TASKS", "get_task", "task_names", "find_task_dir", "load_splits",
           "compute_metrics", "average"]


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        hint = closest(key, TASKS) or closest(key, _ALIASES)
        raise PeftlabError(f"unknown task '{name}'{hint}; known: {', '.join(task_names())}")
    return TASKS[_ALIASES[key]]


def find_task_dir(task: Task, data_dir) -> Path:
    """The folder holding the task's files, looked up under `data_dir` as the module doc says."""
    root = Path(data_dir)
    folders = (task.folder, *EXTRA_FOLDERS.get(task.name, ()))
    candidates = [*(root / task.benchmark / f for f in folders), *(root / f for f in folders), root]
    for candidate in candidates:
        if (candidate / task.files["train"]).exists() or (candidate / task.files["validation"]).exists():
            return candidate
    if not root.exists():
        raise PeftlabError(f"{root}: data directory not found (task {task.name}){_hub_hint(task)}")
    raise PeftlabError(f"{task.name}: no {task.files['train']} under {candidates[0]} (looked in "
                       f"{', '.join(map(str, candidates[1:]))}){_hub_hint(task)}")


def _hub_hint(task: Task) -> str:
    """Where the task comes from without local files, so that a missing folder says what to do."""
    path, config = task.hub
    config = f" ({config})" if config else ""
    return f"; without data.dir peftlab reads the hub dataset '{path}'{config} through `datasets`"


def read_split(task: Task, data_dir, split: str) -> list[Example]:
    """The official `split` ("train", "validation" or "test") from local files, or from the hub."""
    if data_dir is None:
        return read_hub_split(task, split)
    return load_rows(task, find_task_dir(task, data_dir) / task.files[split])


def load_splits(task: Task, data_dir=None, policy: str = "paper", max_train: int | None = None,
                max_eval: int | None = None, mismatched: bool = False) -> dict[str, list[Example]]:
    """train / validation / test. `policy="paper"` follows DESIGN §5; `"official"` trains on the
    whole training file and uses the official validation set as validation, and as test too unless the
    task has a labelled test file (PAWS, SciTail, WebNLG), which `"seq2seq"` also tests on where it keeps
    the official splits (ATTEMPT's PAWS).

    `max_train` / `max_eval` keep the first rows after splitting (the seeds' max_*_samples). `mismatched`:
    MNLI's whole mismatched dev set as one more split, "validation_mismatched" (run_glue.py scores it in
    full besides the matched one)."""
    if policy not in SPLIT_POLICIES:
        raise PeftlabError(f"split policy '{policy}' is not one of {list(SPLIT_POLICIES)}")
    train, dev = read_split(task, data_dir, "train"), read_split(task, data_dir, "validation")
    if policy == "paper":
        splits = paper_splits(task, train, dev)
    elif policy == "seq2seq":
        splits = seq2seq_splits(task, train, dev)
        if task.name == "mnli":   # the seeds validate on mismatched, test on matched (data/tasks.py:237-239)
            mismatched = replace(task, files={**task.files, "validation_mismatched": "dev_mismatched.tsv"})
            splits["validation"] = read_split(mismatched, data_dir, "validation_mismatched")
        elif "test" in task.files and task.name not in (*SEQ2SEQ_SMALL, *SEQ2SEQ_LARGE):
            splits["test"] = read_split(task, data_dir, "test")
    else:
        test = read_split(task, data_dir, "test") if "test" in task.files else dev
        splits = {"train": train, "validation": dev, "test": test}
    if task.kind == "generation":
        splits["validation"] = collapse_references(splits["validation"])
        splits["test"] = collapse_references(splits["test"])
    if max_train is not None:
        splits["train"] = splits["train"][:max_train]
    if max_eval is not None:
        splits["validation"], splits["test"] = splits["validation"][:max_eval], splits["test"][:max_eval]
    if mismatched and task.name == "mnli":
        extra = replace(task, files={**task.files, "validation_mismatched": "dev_mismatched.tsv"})
        splits["validation_mismatched"] = read_split(extra, data_dir, "validation_mismatched")
    for name, rows in splits.items():
        if not rows:
            raise PeftlabError(f"task {task.name}: the {name} split is empty")
    return splits
