"""GLUE, SuperGLUE and E2E NLG: readers for the official files, text formats, splits, metrics.

    task = get_task("sst2")
    splits = load_splits(task, "/work/shared/data")     # {"train", "validation", "test"} -> [Example]
    compute_metrics(task, predictions, splits["test"])

A data directory may be the benchmark's parent (`data/` holding `glue/SST-2/`), the benchmark folder
(`data/glue`), or the task's own folder (`data/glue/SST-2`). With no directory, the task is read from
the Hugging Face hub through `datasets` (needs network and `pip install datasets`).
"""
from __future__ import annotations

from pathlib import Path

from ..config import closest
from ..errors import PeftlabError
from .base import Example, Task, collapse_references, load_rows, paper_splits
from .e2e import E2E_TASK
from .glue import GLUE_TASKS
from .hub import read_hub_split
from .metrics import average, compute_metrics
from .superglue import SUPERGLUE_TASKS

TASKS: dict[str, Task] = {t.name: t for t in (*GLUE_TASKS, *SUPERGLUE_TASKS, E2E_TASK)}
_ALIASES = {alias: t.name for t in TASKS.values() for alias in (t.name, *t.aliases)}
SPLIT_POLICIES = ("paper", "official")

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
    for candidate in (root / task.benchmark / task.folder, root / task.folder, root):
        if (candidate / task.files["train"]).exists() or (candidate / task.files["validation"]).exists():
            return candidate
    if not root.exists():
        raise PeftlabError(f"{root}: data directory not found")
    raise PeftlabError(f"{root / task.benchmark / task.folder}: no {task.files['train']} for task "
                       f"{task.name} under data directory {root}")


def read_split(task: Task, data_dir, split: str) -> list[Example]:
    """The official `split` ("train" or "validation") from local files, or from the hub."""
    if data_dir is None:
        return read_hub_split(task, split)
    return load_rows(task, find_task_dir(task, data_dir) / task.files[split])


def load_splits(task: Task, data_dir=None, policy: str = "paper", max_train: int | None = None,
                max_eval: int | None = None) -> dict[str, list[Example]]:
    """train / validation / test. `policy="paper"` follows DESIGN §5; `"official"` trains on the
    whole training file and uses the official validation set as both validation and test.

    `max_train` / `max_eval` keep the first rows after splitting (the seeds' max_*_samples)."""
    if policy not in SPLIT_POLICIES:
        raise PeftlabError(f"split policy '{policy}' is not one of {list(SPLIT_POLICIES)}")
    train, dev = read_split(task, data_dir, "train"), read_split(task, data_dir, "validation")
    splits = paper_splits(task, train, dev) if policy == "paper" else {"train": train, "validation": dev,
                                                                         "test": dev}
    if task.kind == "generation":
        splits["validation"] = collapse_references(splits["validation"])
        splits["test"] = collapse_references(splits["test"])
    if max_train is not None:
        splits["train"] = splits["train"][:max_train]
    if max_eval is not None:
        splits["validation"], splits["test"] = splits["validation"][:max_eval], splits["test"][:max_eval]
    for name, rows in splits.items():
        if not rows:
            raise PeftlabError(f"task {task.name}: the {name} split is empty")
    return splits
