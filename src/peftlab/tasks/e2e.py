"""E2E NLG Challenge: CSV files with columns `mr` (meaning representation) and `ref` (a reference text).

Each (mr, ref) row is one training example; at evaluation the rows of one `mr` become one example
with every reference, scored by corpus BLEU (sacrebleu) and ROUGE-L (rouge-score)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from .base import Example, Task
from .glue import field
from .readers import read_csv


def e2e_row(task: Task, path: Path, line: int, row: dict) -> Example:
    mr = field(row, "mr", path, line)
    return Example(task.name, {"mr": mr}, field(row, "ref", path, line), group=mr)


E2E_TASK = Task(name="e2e", benchmark="nlg", folder="e2e",
                files={"train": "trainset.csv", "validation": "devset.csv"},
                read=partial(read_csv, required=("mr", "ref")), convert=e2e_row, keys=("mr",),
                kind="generation", metrics=("bleu", "rougeL"), large=True, hub=("e2e_nlg", None),
                aliases=("e2e_nlg", "e2e-nlg"))
