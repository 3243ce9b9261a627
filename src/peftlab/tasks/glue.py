"""GLUE: the files of the standard GLUE download script (TSV; CoLA without a header)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import PeftlabError
from .base import Example, Task
from .readers import read_tsv

COLA_COLUMNS = ("source", "label", "mark", "sentence")


def field(row: dict, column: str, path: Path, line: int) -> str:
    value = row.get(column)
    if value is None:
        raise PeftlabError(f"{path}:{line}: missing field '{column}'")
    return str(value).strip()


def label_of(task: Task, raw, path: Path, line: int):
    """A class index, or a float score for regression tasks."""
    if task.kind != "regression":
        return task.label_index(raw, path, line)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise PeftlabError(f"{path}:{line}: score {raw!r} is not a number") from None


def columns(mapping: dict, label_column: str):
    """A converter taking the task's keys from `mapping` (key -> column) and the label from a column."""
    def convert(task: Task, path: Path, line: int, row: dict) -> Example:
        fields = {key: field(row, column, path, line) for key, column in mapping.items()}
        label = label_of(task, field(row, label_column, path, line), path, line)
        return Example(task.name, fields, label)
    return convert


def _tsv(required, columns=None, header=True):
    return partial(read_tsv, required=required, columns=columns, header=header)


def _task(name, folder, keys, mapping, label_column, kind, metrics, labels=("0", "1"), large=False,
          dev="dev.tsv", header=True, hub_name=None, aliases=(), names=()):
    required = tuple(mapping.values()) + (label_column,)
    return Task(name=name, benchmark="glue", folder=folder, files={"train": "train.tsv", "validation": dev},
                read=_tsv(required, COLA_COLUMNS if not header else None, header),
                convert=columns(mapping, label_column), keys=keys, kind=kind, metrics=metrics,
                labels=labels if kind == "classification" else (), label_names=names, large=large,
                hub=("glue", hub_name or name), aliases=aliases)


GLUE_TASKS = [
    _task("cola", "CoLA", ("sentence",), {"sentence": "sentence"}, "label", "classification", ("mcc",),
          header=False, names=("unacceptable", "acceptable")),
    _task("sst2", "SST-2", ("sentence",), {"sentence": "sentence"}, "label", "classification", ("accuracy",),
          large=True, aliases=("sst-2", "sst"), names=("negative", "positive")),
    _task("mrpc", "MRPC", ("sentence1", "sentence2"), {"sentence1": "#1 String", "sentence2": "#2 String"},
          "Quality", "classification", ("accuracy", "f1"), names=("not_equivalent", "equivalent")),
    _task("qqp", "QQP", ("question1", "question2"), {"question1": "question1", "question2": "question2"},
          "is_duplicate", "classification", ("accuracy", "f1"), large=True, names=("not_duplicate", "duplicate")),
    _task("stsb", "STS-B", ("sentence1", "sentence2"), {"sentence1": "sentence1", "sentence2": "sentence2"},
          "score", "regression", ("pearson", "spearman"), aliases=("sts-b",)),
    _task("mnli", "MNLI", ("premise", "hypothesis"), {"premise": "sentence1", "hypothesis": "sentence2"},
          "gold_label", "classification", ("accuracy",), labels=("entailment", "neutral", "contradiction"),
          large=True, dev="dev_matched.tsv", aliases=("multi_nli",)),    # ATTEMPT's TASK_MAPPING name
    _task("qnli", "QNLI", ("question", "sentence"), {"question": "question", "sentence": "sentence"},
          "label", "classification", ("accuracy",), labels=("entailment", "not_entailment"), large=True),
    _task("rte", "RTE", ("sentence1", "sentence2"), {"sentence1": "sentence1", "sentence2": "sentence2"},
          "label", "classification", ("accuracy",), labels=("entailment", "not_entailment")),
    _task("wnli", "WNLI", ("sentence1", "sentence2"), {"sentence1": "sentence1", "sentence2": "sentence2"},
          "label", "classification", ("accuracy",), names=("not_entailment", "entailment")),
]
