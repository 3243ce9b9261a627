"""ATTEMPT's other tasks (PAWS, WinoGrande, SciTail, Yelp polarity) and kernel-adapters' WebNLG: small files
in each official release format, their examples, text-to-text formats, splits, hub rows and missing files."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.tasks import compute_metrics, get_task, load_splits
from peftlab.tasks.base import Example


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tsv(rows) -> str:
    return "".join("\t".join(map(str, r)) + "\n" for r in rows)


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- PAWS-Wiki labeled final: train.tsv / dev.tsv / test.tsv with a header -------------------------------

PAWS_HEADER = ("id", "sentence1", "sentence2", "label")


def _paws(root: Path) -> Path:
    folder = root / "others" / "paws"
    _write(folder / "train.tsv", _tsv([PAWS_HEADER, (1, "a cat sat .", "the cat sat .", 1),
                                       (2, "he left in 1990 .", "he came in 1990 .", 0),
                                       (3, "x is in y .", "y holds x .", 1)]))
    _write(folder / "dev.tsv", _tsv([PAWS_HEADER, (4, "dev one .", "dev 1 .", 1), (5, "dev two .", "dev 3 .", 0)]))
    _write(folder / "test.tsv", _tsv([PAWS_HEADER, (6, "test one .", "test 1 .", 0),
                                      (7, 'a "quoted" one .', "quoted .", 1)]))
    return root


def test_paws_reads_the_official_tsvs_and_tests_on_test_tsv(tmp_path):
    task = get_task("paws")
    splits = load_splits(task, _paws(tmp_path), policy="official")
    first = splits["train"][0]
    assert first.fields == {"sentence1": "a cat sat .", "sentence2": "the cat sat ."} and first.label == 1
    assert [e.label for e in splits["train"]] == [1, 0, 1]
    assert task.source_text(first) == "paws sentence1: a cat sat . sentence2: the cat sat ."   # ATTEMPT's PAWS
    assert task.target_text(first) == "1" and task.verbalize(0) == "not_paraphrase"
    assert [e.fields["sentence1"] for e in splits["validation"]] == ["dev one .", "dev two ."]
    assert [e.fields["sentence1"] for e in splits["test"]] == ["test one .", 'a "quoted" one .']
    # ATTEMPT keeps PAWS's official splits even with split_validation_test (not in its small/large lists)
    seq2seq = load_splits(task, tmp_path, policy="seq2seq")
    assert [e.fields for e in seq2seq["test"]] == [e.fields for e in splits["test"]]
    assert [e.fields for e in seq2seq["validation"]] == [e.fields for e in splits["validation"]]


# --- WinoGrande 1.1: train_xl.jsonl / dev.jsonl ------------------------------------------------------------

def _winogrande(root: Path) -> Path:
    row = lambda i, answer: {"qID": f"q{i}", "sentence": f"Ann gave Bea a book because _ was kind {i}.",  # noqa: E731
                             "option1": "Ann", "option2": "Bea", "answer": answer}
    _write(root / "winogrande_1.1" / "train_xl.jsonl", _jsonl([row(1, "1"), row(2, "2"), row(3, "2")]))
    _write(root / "winogrande_1.1" / "dev.jsonl", _jsonl([row(4, "1"), row(5, "2")]))
    return root


def test_winogrande_answer_minus_one_is_the_target(tmp_path):
    task = get_task("winogrande")
    splits = load_splits(task, _winogrande(tmp_path), policy="official")   # the archive's own folder name
    assert [e.label for e in splits["train"]] == [0, 1, 1]
    first = splits["train"][0]
    assert first.fields == {"sentence": "Ann gave Bea a book because _ was kind 1.", "option1": "Ann",
                            "option2": "Bea"}
    assert task.source_text(first) == ("winogrande sentence: Ann gave Bea a book because _ was kind 1. "
                                       "option1: Ann option2: Bea")
    assert task.target_text(splits["train"][1]) == "1" and task.parse_target("0") == 0
    assert splits["test"] == splits["validation"] and len(splits["validation"]) == 2     # no labelled test file
    assert get_task("winogrande_xl") is task


def test_winogrande_unknown_answer_names_file_and_line(tmp_path):
    _winogrande(tmp_path)
    path = tmp_path / "winogrande_1.1" / "train_xl.jsonl"
    path.write_text(path.read_text() + json.dumps({"sentence": "s", "option1": "a", "option2": "b",
                                                   "answer": "3"}) + "\n")
    with pytest.raises(PeftlabError, match=r"train_xl\.jsonl:4: unknown label '3' for winogrande"):
        load_splits(get_task("winogrande"), tmp_path, policy="official")


# --- SciTail 1.1 tsv_format: premise \t hypothesis \t entails|neutral, no header --------------------------

def _scitail(root: Path) -> Path:
    folder = root / "others" / "SciTailV1.1" / "tsv_format"
    _write(folder / "scitail_1.0_train.tsv", _tsv([("Plants need light.", "Light feeds plants.", "entails"),
                                                   ("Rocks are hard.", "Water is wet.", "neutral"),
                                                   ("Ice melts at 0 C.", "Ice melts when warm.", "entails")]))
    _write(folder / "scitail_1.0_dev.tsv", _tsv([("d1 .", "h1 .", "neutral"), ("d2 .", "h2 .", "entails")]))
    _write(folder / "scitail_1.0_test.tsv", _tsv([("t1 .", "h1 .", "entails"), ("t2 .", "h2 .", "neutral")]))
    return root


def test_scitail_reads_tsv_format_from_the_archive_layout(tmp_path):
    task = get_task("scitail")
    splits = load_splits(task, _scitail(tmp_path), policy="official")
    first = splits["train"][0]
    assert first.fields == {"premise": "Plants need light.", "hypothesis": "Light feeds plants."}
    assert [e.label for e in splits["train"]] == [0, 1, 0]           # ATTEMPT: entailment "0", neutral "1"
    assert task.source_text(first) == "scitail premise: Plants need light. hypothesis: Light feeds plants."
    assert task.target_text(first) == "0" and task.verbalize(1) == "neutral"
    assert [e.fields["premise"] for e in splits["test"]] == ["t1 .", "t2 ."]         # the labelled test file
    # ATTEMPT halves SciTail's validation set under split_validation_test (its small list)
    seq2seq = load_splits(task, tmp_path, policy="seq2seq")
    assert sorted(e.fields["premise"] for e in seq2seq["validation"] + seq2seq["test"]) == ["d1 .", "d2 ."]


# --- Yelp polarity: train.csv / test.csv, no header, "class","text" ------------------------------------------

def _yelp(root: Path) -> Path:
    folder = root / "others" / "yelp_polarity"
    _write(folder / "train.csv", '"1","Slow service, cold food."\n"2","Loved it. The ""best"" pie.\\nGo!"\n'
                                 '"1","Never again."\n')
    _write(folder / "test.csv", '"2","Great staff."\n"1","Meh."\n')
    return root


def test_yelp_polarity_reads_the_headerless_csv(tmp_path):
    task = get_task("yelp")
    assert task.name == "yelp_polarity" and get_task("yelp-polarity") is task
    splits = load_splits(task, _yelp(tmp_path), policy="official")
    assert [e.label for e in splits["train"]] == [0, 1, 0]                # class 1 -> 0, class 2 -> 1 (hub)
    assert splits["train"][0].fields == {"sentence": "Slow service, cold food."}
    assert splits["train"][1].fields["sentence"] == 'Loved it. The "best" pie.\\nGo!'   # "\n" stays escaped
    assert task.source_text(splits["train"][0]) == "yelp_polarity sentence: Slow service, cold food."
    assert task.target_text(splits["train"][1]) == "1" and task.verbalize(1) == "positive"
    # no validation file: validation and test are both test.csv
    assert [e.fields for e in splits["validation"]] == [{"sentence": "Great staff."}, {"sentence": "Meh."}]
    assert splits["test"] == splits["validation"]


def test_yelp_short_row_names_file_and_line(tmp_path):
    _yelp(tmp_path)
    path = tmp_path / "others" / "yelp_polarity" / "train.csv"
    path.write_text(path.read_text() + '"2"\n')
    with pytest.raises(PeftlabError, match=r"train\.csv:4: row has too few fields"):
        load_splits(get_task("yelp_polarity"), tmp_path, policy="official")


# --- WebNLG challenge 2017 (kernel-adapters / PrefixTuning JSON) ----------------------------------------------

def _entry(number: int, triples, lexes) -> dict:
    return {str(number): {"category": "Airport", "size": str(len(triples)), "xml_id": f"Id{number}",
                          "modifiedtripleset": [{"subject": s, "property": p, "object": o} for s, p, o in triples],
                          "lexicalisations": [{"comment": c, "lex": t, "lid": f"Id{i}"}
                                              for i, (t, c) in enumerate(lexes, start=1)]}}


def _webnlg(folder: Path) -> Path:
    train = [_entry(1, [("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"')],
                    [("Aarhus Airport serves Aarhus, Denmark.", "good"), ("The airport is in Aarhus.", "good")]),
             _entry(2, [("Aarhus", "leader", "Jacob_Bundsgaard"), ("Aarhus_Airport", "cityServed", "Aarhus")],
                    [("Jacob Bundsgaard leads Aarhus, served by its airport.", "good"), ("bad text", "toFix")])]
    dev = [_entry(1, [("Abilene", "isPartOf", "Texas")], [("Abilene is in Texas.", "good"),
                                                          ("Abilene is part of Texas.", "good")])]
    test = [_entry(1, [("Alan_Bean", "occupation", "Test_pilot")], [("Alan Bean was a test pilot.", "good")]),
            _entry(2, [("Alan_Shepard", "status", "Deceased")], [("Alan Shepard is dead.", "good")])]
    for name, entries in (("train", train), ("dev", dev), ("test", test)):
        _write(folder / f"{name}.json", json.dumps({"entries": entries}))
    return folder


def test_webnlg_reads_good_lexicalisations_as_kernel_adapters_does(tmp_path):
    task = get_task("webnlg")
    _webnlg(tmp_path / "nlg" / "webnlg_challenge_2017")
    splits = load_splits(task, tmp_path, policy="official")
    train = splits["train"]
    assert [e.label for e in train] == ["Aarhus Airport serves Aarhus, Denmark.", "The airport is in Aarhus.",
                                        "Jacob Bundsgaard leads Aarhus, served by its airport."]   # toFix dropped
    assert train[0].group == train[1].group != train[2].group
    assert train[2].extra["triples"] == [("Aarhus", "leader", "Jacob_Bundsgaard"),
                                         ("Aarhus_Airport", "cityServed", "Aarhus")]
    assert task.source_text(train[2]) == ("webnlg <subject> Aarhus <property> leader <object> Jacob_Bundsgaard "
                                          "<subject> Aarhus_Airport <property> cityServed <object> Aarhus")
    assert task.target_text(train[0]) == "Aarhus Airport serves Aarhus, Denmark."
    from dataclasses import replace
    assert replace(task, prefix="<bos_webnlg>").source_text(train[0]).startswith("<bos_webnlg> <subject> Aarhus_")
    # evaluation: one input per entry with all its references; official: dev validates, test.json tests
    assert [e.references for e in splits["validation"]] == [("Abilene is in Texas.", "Abilene is part of Texas.")]
    assert [e.references for e in splits["test"]] == [("Alan Bean was a test pilot.",), ("Alan Shepard is dead.",)]
    refs = splits["validation"]
    assert compute_metrics(task, ["Abilene is part of Texas."], refs) == pytest.approx({"bleu": 1.0})


def test_webnlg_reads_kernel_adapters_folder_and_aliases(tmp_path):
    _webnlg(tmp_path / "WebNLG")                                           # kernel-adapters' nlg/data/WebNLG/
    splits = load_splits(get_task("web_nlg"), tmp_path, policy="official")
    assert len(splits["train"]) == 3 and get_task("webnlg_challenge_2017").name == "webnlg"


@pytest.mark.parametrize("content, message", [
    ("{not json", r"train\.json:1: not valid JSON"),
    ('{"data": []}', r"train\.json: expected a JSON object with an 'entries' list"),
    ('{"entries": [{"2": {}}]}', r"train\.json: entry 1: expected an object keyed \"1\""),
    ('{"entries": [{"1": {"lexicalisations": []}}]}', r"train\.json: entry 1: missing field 'modifiedtripleset'"),
])
def test_bad_webnlg_file_names_file_and_entry(tmp_path, content, message):
    folder = _webnlg(tmp_path / "webnlg_challenge_2017")
    (folder / "train.json").write_text(content)
    with pytest.raises(PeftlabError, match=message) as err:
        load_splits(get_task("webnlg"), tmp_path, policy="official")
    assert "\n" not in str(err.value)


# --- missing files, aliases, splits ----------------------------------------------------------------------

def test_missing_task_files_name_task_folders_and_hub(tmp_path):
    with pytest.raises(PeftlabError) as err:
        load_splits(get_task("paws"), tmp_path)
    message = str(err.value)
    assert message.startswith(f"paws: no train.tsv under {tmp_path / 'others' / 'paws'} (looked in ")
    assert str(tmp_path / "others" / "final") in message and f"{tmp_path})" in message
    assert message.endswith("; without data.dir peftlab reads the hub dataset 'paws' (labeled_final) "
                            "through `datasets`")
    assert "\n" not in message
    with pytest.raises(PeftlabError, match=r"yelp_polarity: no train\.csv under .*hub dataset 'yelp_polarity' "
                                           r"through `datasets`$"):
        load_splits(get_task("yelp"), tmp_path)
    with pytest.raises(PeftlabError, match=r"sst2: no train\.tsv under .*glue/SST-2 .*hub dataset 'glue' \(sst2\)"):
        load_splits(get_task("sst2"), tmp_path)                   # every task says so
    with pytest.raises(PeftlabError, match=r"nowhere: data directory not found \(task webnlg\); without data.dir "
                                           r"peftlab reads the hub dataset 'web_nlg' \(webnlg_challenge_2017\)"):
        load_splits(get_task("webnlg"), tmp_path / "nowhere")


def test_missing_test_file_names_it(tmp_path):
    (_paws(tmp_path) / "others" / "paws" / "test.tsv").unlink()
    with pytest.raises(PeftlabError, match=r"paws/test\.tsv: file not found"):
        load_splits(get_task("paws"), tmp_path, policy="official")


@pytest.mark.parametrize("alias, name", [
    ("superglue-wsc.fixed", "wsc"), ("wsc.fixed", "wsc"), ("superglue-boolq", "boolq"), ("superglue-cb", "cb"),
    ("superglue-copa", "copa"), ("superglue-multirc", "multirc"), ("superglue-record", "record"),
    ("superglue-rte", "superglue-rte"), ("superglue-wic", "wic"), ("multi_nli", "mnli"), ("mnli", "mnli"),
    ("qqp", "qqp"), ("qnli", "qnli"), ("sst2", "sst2"), ("stsb", "stsb"), ("cola", "cola"), ("mrpc", "mrpc"),
    ("rte", "rte"), ("wnli", "wnli"), ("paws", "paws"), ("winogrande", "winogrande"), ("scitail", "scitail"),
    ("yelp_polarity", "yelp_polarity"), ("yelp", "yelp_polarity"), ("webnlg", "webnlg"), ("web_nlg", "webnlg"),
])
def test_attempt_and_compacter_task_names(alias, name):
    assert get_task(alias).name == name


def test_the_new_tasks_are_large_and_scored_as_attempt_scores_them():
    for name in ("paws", "winogrande", "scitail", "yelp_polarity"):
        task = get_task(name)
        assert task.large and task.metrics == ("accuracy",) and task.num_labels == 2 and task.benchmark == "others"
    webnlg = get_task("webnlg")
    assert webnlg.large and webnlg.kind == "generation" and webnlg.metrics == ("bleu",)


def test_hub_rows_map_to_the_same_examples(monkeypatch):
    """`datasets` rows (hub column names, labels as indices, web_nlg's nested lists) through the same converters,
    from the split ATTEMPT / kernel-adapters read."""
    webnlg_row = {"modified_triple_sets": {"mtriple_set": [["Abilene | isPartOf | Texas"]]},
                  "lex": {"comment": ["good", "bad"], "text": ["Abilene is in Texas.", "x"], "lid": ["a", "b"]}}
    rows = {("paws", "labeled_final", "test"): [{"id": 1, "sentence1": "a", "sentence2": "b", "label": 1}],
            ("winogrande", "winogrande_xl", "validation"): [{"sentence": "s _", "option1": "A", "option2": "B",
                                                             "answer": "2"}],
            ("scitail", "snli_format", "train"): [{"sentence1": "p", "sentence2": "h", "gold_label": "entailment",
                                                   "annotator_labels": ["entailment"]}],
            ("yelp_polarity", None, "test"): [{"text": "Great.", "label": 1}],
            ("web_nlg", "webnlg_challenge_2017", "dev"): [webnlg_row]}
    fake = types.SimpleNamespace(load_dataset=lambda path, name, split: rows[(path, name, split)])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    from peftlab.tasks.hub import read_hub_split
    paws = read_hub_split(get_task("paws"), "test")[0]
    assert paws.fields == {"sentence1": "a", "sentence2": "b"} and paws.label == 1
    assert read_hub_split(get_task("winogrande"), "validation")[0].label == 1
    scitail = read_hub_split(get_task("scitail"), "train")[0]
    assert scitail.fields == {"premise": "p", "hypothesis": "h"} and scitail.label == 0
    yelp = read_hub_split(get_task("yelp_polarity"), "validation")[0]              # the hub's test split
    assert yelp.fields == {"sentence": "Great."} and yelp.label == 1
    webnlg = read_hub_split(get_task("webnlg"), "validation")                       # web_nlg's "dev"
    assert [e.label for e in webnlg] == ["Abilene is in Texas."]
    assert webnlg[0].fields == {"triples": "<subject> Abilene <property> isPartOf <object> Texas"}


def test_text_to_text_round_trip():
    task = get_task("paws")
    ex = Example("paws", {"sentence1": "a", "sentence2": "b"}, 0)
    assert task.parse_target(task.target_text(ex)) == 0 and task.parse_target("2") == -1
