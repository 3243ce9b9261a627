"""PAWS, WinoGrande, SciTail and Yelp polarity: the "others" tasks of ATTEMPT's configs
(`attempt/configs/attempt/*_others.json`), read from their official release files.

Text formats follow ATTEMPT's `attempt/data/tasks.py` (classes PAWS, WinoGrande, SciTail, YelpPolarity):
the target is the label's index as a string, as the hub releases number them.

| task          | files (official release)                                  | hub (`datasets`)           |
|---------------|-----------------------------------------------------------|----------------------------|
| paws          | train.tsv, dev.tsv, test.tsv (PAWS-Wiki labeled final)    | paws / labeled_final       |
| winogrande    | train_xl.jsonl, dev.jsonl (winogrande_1.1)                | winogrande / winogrande_xl |
| scitail       | scitail_1.0_{train,dev,test}.tsv (SciTailV1.1/tsv_format) | scitail / snli_format      |
| yelp_polarity | train.csv, test.csv (yelp_review_polarity_csv)            | yelp_polarity              |

All four have over 10K training rows, so the `paper` split holds out 1,000 training rows as validation
and tests on the official validation file. Yelp has no validation file: its `validation` is test.csv
(ATTEMPT maps it so too: YelpPolarity.split_to_data_split has only train and test).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from .base import Example, Task
from .glue import columns, field
from .readers import read_csv, read_jsonl, read_tsv

BENCHMARK = "others"        # ATTEMPT's name for this group (configs eval_others.json, multi_task_others.json)

# Folders the official archives unpack to, also looked in (data/others/SciTailV1.1/tsv_format works as is).
FOLDERS = {"paws": ("final",), "winogrande": ("winogrande_1.1",), "scitail": ("SciTailV1.1/tsv_format",),
           "yelp_polarity": ("yelp_review_polarity_csv",)}

SCITAIL_COLUMNS = ("premise", "hypothesis", "label")      # tsv_format has no header line
YELP_COLUMNS = ("label", "text")                          # neither has the CSV
# The hub's snli_format (ATTEMPT's source) writes SciTail's labels as SNLI does; tsv_format writes "entails".
SCITAIL_SYNONYMS = {"entailment": "entails"}


def winogrande(task: Task, path: Path, line: int, row: dict) -> Example:
    """answer "1"/"2" becomes index 0/1 (ATTEMPT: `int(answer) - 1`). ATTEMPT's source reads
    `option0: <option1> option1: <option1>` (WinoGrande.preprocessor passes option1 twice, so its model
    never sees option2): an accident, so peftlab writes `option1: <option1> option2: <option2>`."""
    fields = {key: field(row, key, path, line) for key in task.keys}
    return Example(task.name, fields, task.label_index(field(row, "answer", path, line), path, line))


def scitail(task: Task, path: Path, line: int, row: dict) -> Example:
    """entails/entailment -> 0, neutral -> 1 (ATTEMPT's label2id)."""
    fields = {key: field(row, key, path, line) for key in task.keys}
    raw = field(row, "label", path, line)
    return Example(task.name, fields, task.label_index(SCITAIL_SYNONYMS.get(raw.lower(), raw), path, line))


def yelp(task: Task, path: Path, line: int, row: dict) -> Example:
    """The review under ATTEMPT's key `sentence`; class 1 (negative) -> 0, class 2 (positive) -> 1, as
    the hub numbers them. The CSV's escaped newlines stay written as backslash-n, as on the hub."""
    return Example(task.name, {"sentence": field(row, "text", path, line)},
                   task.label_index(field(row, "label", path, line), path, line))


def _task(name, folder, files, read, convert, keys, labels, names, hub, aliases=()):
    return Task(name=name, benchmark=BENCHMARK, folder=folder, files=files, read=read, convert=convert,
                keys=keys, kind="classification", metrics=("accuracy",), labels=labels, label_names=names,
                large=True, hub=hub, aliases=aliases)


PAWS_TASK = _task(
    "paws", "paws", {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"},
    partial(read_tsv, required=("sentence1", "sentence2", "label")),
    columns({"sentence1": "sentence1", "sentence2": "sentence2"}, "label"), ("sentence1", "sentence2"),
    ("0", "1"), ("not_paraphrase", "paraphrase"), ("paws", "labeled_final"), aliases=("paws-wiki", "paws_wiki"))

WINOGRANDE_TASK = _task(
    "winogrande", "winogrande", {"train": "train_xl.jsonl", "validation": "dev.jsonl"},
    partial(read_jsonl, required=("sentence", "option1", "option2", "answer")), winogrande,
    ("sentence", "option1", "option2"), ("1", "2"), ("option1", "option2"), ("winogrande", "winogrande_xl"),
    aliases=("winogrande_xl", "winogrande-xl"))

SCITAIL_TASK = _task(
    "scitail", "scitail",
    {"train": "scitail_1.0_train.tsv", "validation": "scitail_1.0_dev.tsv", "test": "scitail_1.0_test.tsv"},
    partial(read_tsv, columns=SCITAIL_COLUMNS, header=False, required=SCITAIL_COLUMNS), scitail,
    ("premise", "hypothesis"), ("entails", "neutral"), ("entailment", "neutral"), ("scitail", "snli_format"))

YELP_TASK = _task(
    "yelp_polarity", "yelp_polarity", {"train": "train.csv", "validation": "test.csv"},
    partial(read_csv, columns=YELP_COLUMNS, required=YELP_COLUMNS), yelp, ("sentence",), ("1", "2"),
    ("negative", "positive"), ("yelp_polarity", None), aliases=("yelp", "yelp-polarity"))

OTHER_TASKS = [PAWS_TASK, WINOGRANDE_TASK, SCITAIL_TASK, YELP_TASK]
