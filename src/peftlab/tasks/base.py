"""What a task is: where its files are, how a row becomes an `Example`, its labels, metrics and splits.

Text-to-text format (Compacter / ATTEMPT): source `"<task> key1: text1 key2: text2"`, target the
label as a string (the label's index for classification, the score rounded to 0.2 for STS-B, the text
for generation). Encoders read the same fields as a sentence (pair) with a classification head.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import torch

from ..errors import PeftlabError
from .readers import Row

Kind = Literal["classification", "regression", "generation"]
SPLIT_SEED = 42
# the seeds write MNLI's second field as "hypothesis <text>", no colon (compacter data/tasks.py:249)
NO_COLON = {("hypothesis", "compacter"), ("hypothesis", "attempt")}
LARGE = 10_000          # tasks with at least this many training rows hold out 1K rows as validation
HELD_OUT = 1_000


@dataclass(frozen=True)
class Example:
    task: str
    fields: dict                      # key -> text, in the task's key order
    label: int | float | str          # class index, score, or target text
    group: str | None = None          # MultiRC question, ReCoRD query, E2E meaning representation
    references: tuple[str, ...] = ()  # every accepted answer (ReCoRD answers, E2E references)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    name: str
    benchmark: str                    # "glue", "superglue", "nlg": the data folder it lives under
    folder: str                       # its folder inside the benchmark's directory
    files: dict                       # split ("train", "validation") -> file name
    read: Callable[[Path], list[Row]]
    convert: Callable[["Task", Path, int, dict], Example | list[Example]]
    keys: tuple[str, ...]
    kind: Kind
    metrics: tuple[str, ...]
    labels: tuple = ()                # raw label values in index order (classification)
    label_names: tuple = ()           # what each index means, as the dataset names it (SST-2: negative, positive)
    large: bool = False               # the official training set has >= 10K rows
    hub: tuple[str, str | None] = ("", None)   # (dataset path, config) for `datasets`
    aliases: tuple[str, ...] = ()
    prefix: bool | str = True         # sources start with the task name, this text, or nothing (False)
    text_compat: str | None = None    # reproduce a seed code base's text quirks ("compacter", "attempt")

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    def label_index(self, value, path: Path, line: int) -> int:
        """The index of a raw label value; an unknown value names the file and line."""
        for index, known in enumerate(self.labels):
            if str(value).strip().lower() == str(known).lower():
                return index
        raise PeftlabError(f"{path}:{line}: unknown label {value!r} for {self.name} "
                           f"(expected one of {', '.join(map(str, self.labels))})")

    def source_text(self, example: Example) -> str:
        head = [self.prefix] if isinstance(self.prefix, str) else [self.name] if self.prefix else []
        return " ".join(head + [f"{k}{'' if (k, self.text_compat) in NO_COLON else ':'} {v}"
                                for k, v in self._source_fields(example)])

    def _source_fields(self, example: Example) -> list[tuple[str, str]]:
        if self.text_compat == "attempt" and self.name == "winogrande":
            # ATTEMPT's WinoGrande.preprocessor passes option1 twice (attempt/data/tasks.py)
            first = example.fields["option1"]
            return [("sentence", example.fields["sentence"]), ("option0", first), ("option1", first)]
        return [(k, example.fields[k]) for k in self.keys]

    def target_text(self, example: Example) -> str:
        if self.kind == "regression" and self.text_compat in ("compacter", "attempt"):
            # round_stsb_target: np.round((label * 5) / 5, decimals=1) rounds to 0.1, not 0.2 (data/utils.py:16)
            return f"{round(float(example.label), 1):.1f}"
        if self.kind == "regression":
            return f"{round(float(example.label) * 5) / 5:.1f}"
        return str(example.label)

    def parse_target(self, text: str):
        """A generated string back to a label (index or score); unparseable text gives None/-1."""
        text = text.strip()
        if self.kind == "generation":
            return text
        try:
            value = float(text)
        except ValueError:
            return -1 if self.kind == "classification" else None
        if self.kind == "regression":
            return value
        return int(value) if value.is_integer() and 0 <= value < len(self.labels) else -1

    # --- a seed code base's own token layout for causal LMs (kernel-adapters' WebNLG); None: plain text
    def special_tokens(self) -> dict | None:
        """Special tokens the layout adds to the tokenizer (`tokenizer.add_special_tokens`), or None."""
        return None

    def causal_layout(self, example: Example, tokenizer, with_target: bool):
        """(input_ids, token_type_ids, labels) for a causal LM, or None for `source answer: target`."""
        return None

    def stop_token_ids(self, tokenizer) -> list[int] | None:
        """Tokens that end a generation (besides the model's end token), or None."""
        return None

    def verbalize(self, label) -> str:
        """A predicted label by its name (`positive`), or as the dataset writes it where the dataset
        names none (for `peftlab predict`)."""
        names = self.label_names or self.labels
        if self.kind == "classification" and isinstance(label, int) and 0 <= label < len(names):
            return str(names[label])
        return str(label)


def load_rows(task: Task, path: Path) -> list[Example]:
    out: list[Example] = []
    for line, row in task.read(path):
        made = task.convert(task, path, line, row)
        out.extend(made if isinstance(made, list) else [made])
    if not out:
        raise PeftlabError(f"{path}: no examples (empty split)")
    return out


def paper_splits(task: Task, train: list[Example], dev: list[Example]) -> dict[str, list[Example]]:
    """DESIGN §5: small tasks split the official validation set in half (validation / test); large
    ones hold out 1K training rows as validation and test on the official validation set (seed 42).

    Rows sharing a group (a MultiRC question, an E2E input) stay on the same side of a split."""
    if task.large:
        held, rest = _split_groups(train, HELD_OUT, count_rows=True)
        return {"train": rest, "validation": held, "test": dev}
    half = len(_groups(dev)) // 2
    validation, test = _split_groups(dev, half)
    if not validation or not test:
        raise PeftlabError(f"{task.name}: validation set of {len(dev)} rows is too small to split in half")
    return {"train": train, "validation": validation, "test": test}


# compacter seq2seq/data/tasks.py:28-31 and ATTEMPT attempt/data/tasks.py:29-33 (peftlab's task names)
SEQ2SEQ_SMALL = ("cola", "wnli", "rte", "cb", "copa", "multirc", "wic", "wsc", "superglue-rte", "mrpc", "stsb",
                 "boolq", "scitail")
SEQ2SEQ_LARGE = ("qqp", "qnli", "record", "sst2", "yelp_polarity", "winogrande")


def seq2seq_splits(task: Task, train: list[Example], dev: list[Example], seed: int = SPLIT_SEED) -> dict:
    """The seeds' `split_validation_test`: a small task's validation set is permuted with
    torch.randperm(seeded 42) and halved (validation, test); a large task's training set is permuted and
    its first 1,000 rows become validation, the official validation set the test; any other task keeps
    its official splits (MNLI: validation mismatched, test matched, read by the caller). Rows, not
    groups: the code splits MultiRC by rows (data/tasks.py:95-118)."""
    generator = torch.Generator().manual_seed(seed)
    if task.name in SEQ2SEQ_SMALL:
        order = torch.randperm(len(dev), generator=generator).tolist()
        half = len(dev) // 2
        return {"train": train, "validation": [dev[i] for i in order[:half]], "test": [dev[i] for i in order[half:]]}
    if task.name in SEQ2SEQ_LARGE:
        order = torch.randperm(len(train), generator=generator).tolist()
        return {"train": [train[i] for i in order[HELD_OUT:]], "validation": [train[i] for i in order[:HELD_OUT]],
                "test": dev}
    return {"train": train, "validation": dev, "test": dev}


def _groups(rows: list[Example]) -> dict:
    groups: dict = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.group if row.group is not None else ("#", index), []).append(row)
    return groups


def _split_groups(rows: list[Example], first: int, count_rows: bool = False):
    """Whole groups from a seeded shuffle until `first` groups (or rows) are taken, and the rest;
    each side keeps file order."""
    groups = _groups(rows)
    keys = list(groups)
    order = list(range(len(keys)))
    random.Random(SPLIT_SEED).shuffle(order)
    chosen, taken = set(), 0
    for index in order:
        if taken >= first:
            break
        chosen.add(index)
        taken += len(groups[keys[index]]) if count_rows else 1
    head = [r for i, k in enumerate(keys) if i in chosen for r in groups[k]]
    tail = [r for i, k in enumerate(keys) if i not in chosen for r in groups[k]]
    return head, tail


def collapse_references(rows: list[Example]) -> list[Example]:
    """One example per group, holding every reference of the group (E2E evaluation: all refs of an MR)."""
    merged: dict = {}
    for row in rows:
        key = row.group if row.group is not None else id(row)
        if key in merged:
            first = merged[key]
            merged[key] = replace(first, references=first.references + (str(row.label),))
        else:
            merged[key] = replace(row, references=row.references or (str(row.label),))
    return list(merged.values())
