"""Reading a task from the Hugging Face hub through `datasets` (online, optional dependency).

Hub rows carry labels as indices in the same order as our `Task.labels` (GLUE / SuperGLUE releases),
so a row is mapped back to the official file's fields and goes through the same converter."""
from __future__ import annotations

from pathlib import Path

from ..errors import PeftlabError
from .base import Example, Task

# hub column -> the column name our converter reads, where the two differ
_RENAME = {
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    "qqp": {"label": "is_duplicate"},
    "stsb": {"label": "score"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    "e2e": {"meaning_representation": "mr", "human_reference": "ref"},
    "scitail": {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},   # snli_format
}
_HUB_SPLIT = {"train": "train", "validation": "validation", "validation_mismatched": "validation_mismatched",
              "test": "test"}
# hub split names where a task's differ: yelp_polarity has only train and test (its validation file is
# test.csv); web_nlg names its validation split "dev"
_TASK_SPLIT = {"mnli": {"validation": "validation_matched"}, "yelp_polarity": {"validation": "test"},
               "webnlg": {"validation": "dev"}}


def read_hub_split(task: Task, split: str) -> list[Example]:
    try:
        import datasets   # optional: the [hub] extra, needed only to read tasks online
    except ImportError:
        raise PeftlabError(f"task {task.name}: no data.dir given and the 'datasets' package is not "
                           f"installed (pip install datasets, or set data.dir to the task files)") from None
    path, name = task.hub
    hub_split = _TASK_SPLIT.get(task.name, {}).get(split, _HUB_SPLIT[split])
    try:
        rows = datasets.load_dataset(path, name, split=hub_split)
    except Exception as err:  # network, unknown dataset: report it as a user-facing one-liner
        raise PeftlabError(f"task {task.name}: cannot load {path}/{name} from the hub "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    source = Path(f"hub:{path}/{name or ''}:{hub_split}")
    out: list[Example] = []
    for index, row in enumerate(rows, start=1):
        made = task.convert(task, source, index, _as_file_row(task, dict(row)))
        out.extend(made if isinstance(made, list) else [made])
    if not out:
        raise PeftlabError(f"{source}: no examples (empty split)")
    return out


def _as_file_row(task: Task, row: dict) -> dict:
    rename = _RENAME.get(task.name, {})
    row = {rename.get(k, k): v for k, v in row.items()}
    label_key = rename.get("label", "label")
    value = row.get(label_key)
    if task.kind == "classification" and isinstance(value, int) and 0 <= value < len(task.labels):
        row[label_key] = task.labels[value]
    return row
