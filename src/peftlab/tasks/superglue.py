"""SuperGLUE: the official JSON-lines files (`train.jsonl`, `val.jsonl`; FewGLUE has the same fields)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import PeftlabError
from .base import Example, Task
from .glue import field
from .readers import read_jsonl

BOOL = ("false", "true")


def simple(task: Task, path: Path, line: int, row: dict) -> Example:
    fields = {key: field(row, key, path, line) for key in task.keys}
    return Example(task.name, fields, task.label_index(field(row, "label", path, line), path, line))


def wsc(task: Task, path: Path, line: int, row: dict) -> Example:
    """The text with span 1 marked `* ... *` and span 2 (the pronoun) `# ... #`, spaces around the marks,
    as Compacter and ATTEMPT write it (T5's `_mark_span`; compacter data/tasks.py:471-485)."""
    target = row.get("target")
    if not isinstance(target, dict):
        raise PeftlabError(f"{path}:{line}: missing field 'target'")
    words = field(row, "text", path, line).split(" ")
    for index_key, text_key, mark in (("span1_index", "span1_text", "*"), ("span2_index", "span2_text", "#")):
        start, span = target.get(index_key), str(target.get(text_key, ""))
        if not isinstance(start, int) or not 0 <= start < len(words):
            raise PeftlabError(f"{path}:{line}: bad target.{index_key} {start!r}")
        end = start + max(len(span.split(" ")), 1) - 1
        words[start] = f"{mark} {words[start]}"
        words[min(end, len(words) - 1)] += f" {mark}"
    label = task.label_index(field(row, "label", path, line), path, line)
    return Example(task.name, {"text": " ".join(words)}, label)


def multirc(task: Task, path: Path, line: int, row: dict) -> list[Example]:
    """One example per (question, answer); answers of one question share a group (for grouped EM)."""
    passage = row.get("passage")
    if not isinstance(passage, dict) or "text" not in passage or "questions" not in passage:
        raise PeftlabError(f"{path}:{line}: missing field 'passage' with 'text' and 'questions'")
    out = []
    for question in passage["questions"]:
        group = f"{row.get('idx', line)}-{question.get('idx')}"
        for answer in question.get("answers", []):
            fields = {"question": str(question.get("question", "")), "answer": str(answer.get("text", "")),
                      "paragraph": str(passage["text"])}
            label = task.label_index(answer.get("label"), path, line)
            out.append(Example(task.name, fields, label, group=group))
    return out


def record(task: Task, path: Path, line: int, row: dict) -> list[Example]:
    """One example per query; the target is the first answer, every answer counts at evaluation."""
    passage = row.get("passage")
    if not isinstance(passage, dict) or "text" not in passage:
        raise PeftlabError(f"{path}:{line}: missing field 'passage' with 'text'")
    text = str(passage["text"])
    entities = sorted({text[e["start"]: e["end"] + 1] for e in passage.get("entities", [])})
    out = []
    for qa in row.get("qas", []):
        answers = tuple(str(a.get("text", "")) for a in qa.get("answers", []))
        fields = {"query": str(qa.get("query", "")), "entities": ", ".join(entities),
                  "passage": text.replace("@highlight\n", "- ")}
        out.append(Example(task.name, fields, answers[0] if answers else "", group=str(qa.get("idx", line)),
                           references=answers))
    return out


def _task(name, folder, keys, metrics, labels=BOOL, convert=simple, kind="classification", large=False,
          required=("label",), hub_name=None, aliases=None, names=()):
    return Task(name=name, benchmark="superglue", folder=folder,
                files={"train": "train.jsonl", "validation": "val.jsonl"},
                read=partial(read_jsonl, required=required), convert=convert, keys=keys, kind=kind,
                metrics=metrics, labels=labels, label_names=names, large=large,
                hub=("super_glue", hub_name or folder.lower()),
                aliases=(f"superglue-{name}",) if aliases is None else aliases)


SUPERGLUE_TASKS = [
    _task("boolq", "BoolQ", ("question", "passage"), ("accuracy",), required=("question", "passage", "label")),
    _task("cb", "CB", ("premise", "hypothesis"), ("macro_f1", "accuracy"),
          labels=("entailment", "contradiction", "neutral"), required=("premise", "hypothesis", "label")),
    _task("copa", "COPA", ("premise", "choice1", "choice2"), ("accuracy",), labels=("0", "1"),
          required=("premise", "choice1", "choice2", "label"), names=("choice1", "choice2")),
    _task("multirc", "MultiRC", ("question", "answer", "paragraph"), ("f1", "exact_match"),
          labels=("0", "1"), convert=multirc, required=("passage",), names=("False", "True")),
    _task("record", "ReCoRD", ("query", "entities", "passage"), ("exact_match", "f1"), labels=(),
          convert=record, kind="generation", large=True, required=("passage", "qas")),
    _task("wic", "WiC", ("sentence1", "sentence2", "word"), ("accuracy",),
          required=("sentence1", "sentence2", "word", "label")),
    _task("wsc", "WSC", ("text",), ("accuracy",), convert=wsc, required=("text", "target", "label"),
          hub_name="wsc.fixed",     # ATTEMPT and Compacter name it by its hub config: superglue-wsc.fixed
          aliases=("superglue-wsc", "superglue-wsc.fixed", "wsc.fixed")),
    _task("superglue-rte", "RTE", ("premise", "hypothesis"), ("accuracy",),
          labels=("entailment", "not_entailment"), required=("premise", "hypothesis", "label"), hub_name="rte",
          aliases=()),     # named "superglue-rte" itself: plain "rte" is GLUE's
]
