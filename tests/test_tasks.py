"""Task readers (official formats), text-to-text formats, splits, metrics, and bad input files."""
from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.metrics import matthews_corrcoef

from peftlab.errors import PeftlabError
from peftlab.tasks import TASKS, compute_metrics, get_task, load_splits, task_names
from peftlab.tasks.base import Example
from test_train_support import ROWS, write_task_files

SHARED = Path("/work/shared/data")
REPO_DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_task_files(tmp_path_factory.mktemp("data"))


def test_every_task_reads_its_official_files(data_dir):
    written = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "boolq", "cb", "copa",
               "multirc", "record", "wic", "wsc", "superglue-rte", "e2e"}        # by write_task_files
    others = {"paws", "winogrande", "scitail", "yelp_polarity", "webnlg"}      # tests/test_tasks_others.py
    assert set(task_names()) == written | others
    for name in sorted(written):
        task = get_task(name)
        splits = load_splits(task, data_dir, policy="official")
        per_row = 2 if name == "multirc" else 1          # one example per (question, answer)
        assert len(splits["train"]) == ROWS["train"] * per_row, name
        first = splits["train"][0]
        assert task.source_text(first).startswith(f"{name} {task.keys[0]}: ")
        if task.kind == "classification":
            assert all(0 <= e.label < task.num_labels for e in splits["train"]), name


def test_text_to_text_formats(data_dir):
    mrpc = get_task("mrpc")
    ex = Example("mrpc", {"sentence1": "a b", "sentence2": "c"}, 1)
    assert mrpc.source_text(ex) == "mrpc sentence1: a b sentence2: c" and mrpc.target_text(ex) == "1"
    stsb = get_task("sts-b")
    assert stsb.target_text(Example("stsb", {}, 3.47)) == "3.4"
    assert stsb.target_text(Example("stsb", {}, 3.52)) == "3.6"
    assert stsb.parse_target("2.8") == 2.8 and stsb.parse_target("x") is None
    assert get_task("cb").parse_target("2") == 2 and get_task("cb").parse_target("7") == -1
    wsc = load_splits(get_task("wsc"), data_dir, policy="official")["train"][0]
    assert wsc.fields["text"] == "the * man * sees the dog and # he # likes it"    # T5's _mark_span
    assert get_task("superglue-cb") is get_task("cb") and get_task("SST-2") is get_task("sst2")
    with pytest.raises(PeftlabError, match="unknown task 'sst3'.*did you mean 'sst2'"):
        get_task("sst3")


@pytest.mark.skipif(not (SHARED / "glue" / "RTE").exists(), reason="shared task data not on this machine")
def test_paper_splits_small_task_halves_the_validation_set():
    splits = load_splits(get_task("rte"), SHARED)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (2490, 138, 139)
    pairs = lambda rows: {(e.fields["sentence1"], e.fields["sentence2"]) for e in rows}  # noqa: E731
    assert not pairs(splits["validation"]) & pairs(splits["test"])
    again = load_splits(get_task("rte"), SHARED)
    assert [e.fields for e in again["validation"]] == [e.fields for e in splits["validation"]]


def test_paper_splits_large_task_holds_out_1k_training_rows():
    splits = load_splits(get_task("sst2"), REPO_DATA)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (5000, 1000, 872)
    from peftlab.tasks.base import load_rows
    every = load_rows(get_task("sst2"), REPO_DATA / "SST-2" / "train.tsv")
    assert sorted(e.fields["sentence"] for e in splits["train"] + splits["validation"]) == \
        sorted(e.fields["sentence"] for e in every)          # a partition of the training file
    assert splits["validation"] != every[:1000]             # held out at random (seed 42), not the head


def test_generation_eval_rows_collect_every_reference(data_dir):
    rows = [Example("e2e", {"mr": "m1"}, "r1", group="m1"), Example("e2e", {"mr": "m1"}, "r2", group="m1"),
            Example("e2e", {"mr": "m2"}, "r3", group="m2")]
    from peftlab.tasks.base import collapse_references
    merged = collapse_references(rows)
    assert [e.references for e in merged] == [("r1", "r2"), ("r3",)]


def test_metrics_match_their_definitions():
    ex = lambda labels, groups=None: [Example("t", {}, y, group=(groups or [None] * len(labels))[i])  # noqa: E731
                                      for i, y in enumerate(labels)]
    gold, pred = [1, 0, 0, 1, 1, 0], [1, 0, 1, 1, 0, 0]
    out = compute_metrics(get_task("cola"), pred, ex(gold))
    assert out["mcc"] == pytest.approx(matthews_corrcoef(gold, pred))
    out = compute_metrics(get_task("mrpc"), pred, ex(gold))
    assert out == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3})          # tp=2, fp=1, fn=1
    out = compute_metrics(get_task("mrpc"), [1, -1], ex([1, 1]))          # unparseable counts as wrong
    assert out["f1"] == pytest.approx(2 / 3)
    out = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0], ex([2.0, 4.0, 6.0]))
    assert out == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    out = compute_metrics(get_task("multirc"), [1, 0, 1, 1], ex([1, 0, 1, 0], ["q1", "q1", "q2", "q2"]))
    assert out["exact_match"] == 0.5 and out["f1"] == pytest.approx(0.8)
    out = compute_metrics(get_task("cb"), [0, 1, 2, 2], ex([0, 1, 2, 1]))
    assert out["accuracy"] == 0.75 and out["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    refs = [Example("e2e", {}, "the pub is cheap", references=("the pub is cheap", "a cheap pub"))]
    assert compute_metrics(get_task("e2e"), ["the pub is cheap"], refs) == pytest.approx({"bleu": 1.0, "rougeL": 1.0})
    record = [Example("record", {}, "Dog", references=("Dog", "the dog"))]
    assert compute_metrics(get_task("record"), ["dog"], record) == pytest.approx({"exact_match": 1.0, "f1": 1.0})


# --- bad inputs: one line naming the file (and line) -------------------------------------------------

def _sst2_dir(tmp_path, train: bytes) -> Path:
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_bytes(train)
    (folder / "dev.tsv").write_bytes(b"sentence\tlabel\ngood film\t1\nbad film\t0\n")
    return tmp_path


def test_missing_file_names_it(tmp_path):
    folder = _sst2_dir(tmp_path, b"sentence\tlabel\nok\t1\n")
    (folder / "glue" / "SST-2" / "dev.tsv").unlink()
    with pytest.raises(PeftlabError, match=r"SST-2/dev\.tsv: file not found"):
        load_splits(get_task("sst2"), folder, policy="official")


@pytest.mark.parametrize("content, message", [
    (b"text\tlabel\nok\t1\n", r"train\.tsv: missing column 'sentence' \(columns: text, label\)"),
    (b"sentence\tlabel\nok\t1\nfine\tmaybe\n", r"train\.tsv:3: unknown label 'maybe' for sst2"),
    (b"sentence\tlabel\n", r"train\.tsv: no examples \(empty split\)"),
    (b"sentence\tlabel\nok\t1\nbad \xff\xfe\t0\n", r"train\.tsv:3: not UTF-8 text"),
    (b"sentence\tlabel\nok\t1\nno label here\n", r"train\.tsv:3: 1 fields, expected 2"),
])
def test_bad_files_raise_one_line_naming_file_and_line(tmp_path, content, message):
    folder = _sst2_dir(tmp_path, content)
    with pytest.raises(PeftlabError, match=message) as err:
        load_splits(get_task("sst2"), folder, policy="official")
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


def test_bad_jsonl_names_the_line(tmp_path):
    folder = tmp_path / "CB"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "a"\n')
    (folder / "val.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n')
    with pytest.raises(PeftlabError, match=r"CB/train\.jsonl:2: not valid JSON"):
        load_splits(get_task("cb"), tmp_path, policy="official")
    (folder / "train.jsonl").write_text('{"premise": "a", "label": "neutral"}\n')
    with pytest.raises(PeftlabError, match=r"train\.jsonl:1: missing field 'hypothesis'"):
        load_splits(get_task("cb"), tmp_path, policy="official")


def test_missing_data_dir_and_hub_without_datasets(tmp_path, monkeypatch):
    with pytest.raises(PeftlabError, match="data directory not found"):
        load_splits(get_task("rte"), tmp_path / "nowhere")
    import sys
    monkeypatch.setitem(sys.modules, "datasets", None)      # as if `datasets` were not installed
    with pytest.raises(PeftlabError, match="'datasets' package is not installed"):
        load_splits(get_task("rte"), None)


def test_every_task_has_a_hub_name_and_metrics():
    for task in TASKS.values():
        assert task.hub[0] and task.metrics and task.files["train"] and task.files["validation"]


def test_hub_rows_map_to_the_same_examples(monkeypatch):
    """`datasets` rows (labels as indices, hub column names) go through the official-file converters."""
    import sys
    import types
    rows = {("glue", "mrpc", "train"): [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}],
            ("glue", "mnli", "validation_matched"): [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0}],
            ("super_glue", "cb", "train"): [{"premise": "p", "hypothesis": "h", "label": 1, "idx": 0}]}
    fake = types.SimpleNamespace(load_dataset=lambda path, name, split: rows[(path, name, split)])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    from peftlab.tasks.hub import read_hub_split
    mrpc = read_hub_split(get_task("mrpc"), "train")[0]
    assert mrpc.fields == {"sentence1": "a", "sentence2": "b"} and mrpc.label == 1
    mnli = read_hub_split(get_task("mnli"), "validation")[0]
    assert mnli.fields == {"premise": "p", "hypothesis": "h"} and mnli.label == 2      # contradiction
    cb = read_hub_split(get_task("cb"), "train")[0]
    assert cb.label == 1 and get_task("cb").labels[1] == "contradiction"
