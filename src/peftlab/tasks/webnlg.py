"""WebNLG Challenge 2017 as kernel-adapters reads it (nlg/utils.py `load_webnlg`, taken from PrefixTuning).

Files: `train.json`, `dev.json`, `test.json`, each `{"entries": [{"1": {...}}, {"2": {...}}, ...]}` where an
entry has `modifiedtripleset` (a list of `{subject, property, object}`) and `lexicalisations` (a list of
`{lex, comment, lid}`). As in the code, each lexicalisation whose comment is "good" is one example and the
others are dropped. At evaluation the examples of one entry become one input holding every reference,
scored by corpus BLEU (sacrebleu; the code runs the challenge's own script, which also reports METEOR and
TER, which peftlab does not compute).

Source text: the triples as kernel-adapters lays them out between its segment tokens (train.py:131-153),
`<subject> s <property> p <object> o <subject> ...`, after the task prefix (the task name by default; a
run may set the prefix to `<bos_webnlg>`). The triples themselves are kept in `Example.extra["triples"]`.
The `official` split trains on train.json, validates on dev.json and tests on test.json (evaluate.py
decodes test.json); the `paper` split holds out 1,000 training rows (whole entries) and tests on dev.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PeftlabError
from .base import Example, Task
from .readers import Row, read_text

FOLDERS = ("WebNLG",)          # kernel-adapters keeps the files in nlg/data/WebNLG/ (train.py:76-78)
MARKERS = ("<subject>", "<property>", "<object>")


def read_webnlg_json(path: Path) -> list[Row]:
    """The entries of a WebNLG 2017 JSON file, numbered from 1 as the file keys them; a problem names the
    file and the entry number."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PeftlabError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise PeftlabError(f"{path}: expected a JSON object with an 'entries' list (WebNLG 2017 JSON)")
    rows = []
    for number, entry in enumerate(entries, start=1):
        # the code reads entry i as example[str(i + 1)]: a file numbered otherwise would be misread there
        body = entry.get(str(number)) if isinstance(entry, dict) else None
        if not isinstance(body, dict):
            raise PeftlabError(f"{path}: entry {number}: expected an object keyed \"{number}\"")
        rows.append((number, body))
    if not rows:
        raise PeftlabError(f"{path}: no examples (empty split)")
    return rows


def _triples(entry: dict, path: Path, number: int) -> list[tuple[str, str, str]]:
    triples = entry.get("modifiedtripleset")
    if not isinstance(triples, list) or not triples:
        raise PeftlabError(f"{path}: entry {number}: missing field 'modifiedtripleset'")
    out = []
    for triple in triples:
        if not isinstance(triple, dict) or any(not isinstance(triple.get(k), str) for k in
                                               ("subject", "property", "object")):
            raise PeftlabError(f"{path}: entry {number}: a triple needs subject, property and object")
        out.append((triple["subject"], triple["property"], triple["object"]))
    return out


def _from_hub(row: dict) -> dict:
    """A `web_nlg` hub row (triples as "s | p | o" strings, lexicalisations as parallel lists) in the
    JSON file's shape."""
    sets = row["modified_triple_sets"].get("mtriple_set") or [[]]
    triples = [dict(zip(("subject", "property", "object"), (part.strip() for part in t.split(" | ", 2))))
               for t in sets[0]]
    lex = row.get("lex") or {}
    lexes = [{"lex": text, "comment": comment} for text, comment in zip(lex.get("text", []), lex.get("comment", []))]
    return {"modifiedtripleset": triples, "lexicalisations": lexes}


def webnlg_entry(task: Task, path: Path, number: int, entry: dict) -> list[Example]:
    """One example per "good" lexicalisation of the entry, grouped by the entry."""
    if "modified_triple_sets" in entry:
        entry = _from_hub(entry)
    triples = _triples(entry, path, number)
    lexes = entry.get("lexicalisations")
    if not isinstance(lexes, list):
        raise PeftlabError(f"{path}: entry {number}: missing field 'lexicalisations'")
    source = " ".join(f"{MARKERS[0]} {s} {MARKERS[1]} {p} {MARKERS[2]} {o}" for s, p, o in triples)
    return [Example(task.name, {"triples": source}, str(lex.get("lex", "")), group=f"{path.name}:{number}",
                    extra={"triples": triples})
            for lex in lexes if isinstance(lex, dict) and lex.get("comment") == "good"]


# kernel-adapters' tokens, in its order (nlg/train.py:56-65): GPT-2's tokenizer gives them ids 50257-50272
KERNEL_TOKENS = {"pad_token": "<pad>", "additional_special_tokens": (
    "<bos_qa>", "<eos_qa>", "<question>", "<answer>", "<document>", "<bos_sm>", "<eos_sm>", "<source_sm>",
    "<target_sm>", "<bos_webnlg>", "<eos_webnlg>", "<subject>", "<property>", "<object>", "<target_webnlg>",
    "<pad>")}
KERNEL_WEBNLG = ("<bos_webnlg>", "<eos_webnlg>", "<subject>", "<property>", "<object>", "<target_webnlg>")


class WebNLGTask(Task):
    """The source is the prefix and the marked triples, without a `triples:` key: kernel-adapters' input
    has no such word (train.py:131-153). With `text_compat="kernel-adapters"` the input is the code's own
    token layout instead (`causal_layout`)."""

    def source_text(self, example: Example) -> str:
        head = [self.prefix] if isinstance(self.prefix, str) else [self.name] if self.prefix else []
        return " ".join(head + [example.fields["triples"]])

    def special_tokens(self) -> dict | None:
        return KERNEL_TOKENS if self.text_compat == "kernel-adapters" else None

    def causal_layout(self, example: Example, tokenizer, with_target: bool):
        """kernel-adapters' build_input_from_segments_webnlg (nlg/train.py:131-153): `<bos_webnlg>`, then per
        triple `<subject>` s `<property>` p `<object>` o, then `<target_webnlg>` text `<eos_webnlg>`, each
        string tokenized on its own without a leading space (utils.py:52-61); the token types are the
        segment's marker (`<bos_webnlg>` for the first token, `<target_webnlg>` for the target segment),
        which GPT-2 embeds with its token embedding; labels only on the text and `<eos_webnlg>`."""
        if self.text_compat != "kernel-adapters":
            return None
        bos, eos, *markers, target = tokenizer.convert_tokens_to_ids(list(KERNEL_WEBNLG))
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]   # noqa: E731
        ids, types = [bos], [bos]
        for triple in example.extra["triples"]:
            for marker, text in zip(markers, triple):
                segment = [marker] + encode(text)
                ids, types = ids + segment, types + [marker] * len(segment)
        answer = (encode(self.target_text(example)) + [eos]) if with_target else []
        labels = [-100] * (len(ids) + 1) + answer
        return ids + [target] + answer, types + [target] * (1 + len(answer)), labels

    def stop_token_ids(self, tokenizer) -> list[int] | None:
        """evaluate.py stops at any of the six webnlg tokens (nlg/evaluate.py:77, 105-106)."""
        if self.text_compat != "kernel-adapters":
            return None
        return tokenizer.convert_tokens_to_ids(list(KERNEL_WEBNLG))


WEBNLG_TASK = WebNLGTask(
    name="webnlg", benchmark="nlg", folder="webnlg_challenge_2017",
    files={"train": "train.json", "validation": "dev.json", "test": "test.json"},
    read=read_webnlg_json, convert=webnlg_entry, keys=("triples",), kind="generation", metrics=("bleu",),
    large=True, hub=("web_nlg", "webnlg_challenge_2017"),
    aliases=("web_nlg", "webnlg_challenge_2017", "webnlg2017", "webnlg-2017"))
