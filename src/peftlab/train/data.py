"""Examples -> token ids, and lists of encoded examples -> padded batches, for the three model kinds:

- `classification`: an encoder with a classification (or regression) head reads the task's fields as
  a sentence or a sentence pair; the label is a class index or a score.
- `seq2seq`: an encoder-decoder reads the text-to-text source and learns the target string.
- `causal`: a decoder reads `source + " answer:"` followed by the target and an end token; the loss
  covers the target only (prompt positions are labelled -100).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tasks import Example, Task

IGNORE = -100
ANSWER = " answer:"


@dataclass
class Encoded:
    task: int                      # index into the run's task list
    input_ids: list[int]
    labels: int | float | list[int]
    token_type_ids: list[int] | None = None


def _pair(task: Task, example: Example) -> tuple[str, str | None]:
    values = [example.fields[k] for k in task.keys]
    if len(values) == 1:
        return values[0], None
    return values[0], " ".join(values[1:])


def encode(kind: str, tokenizer, task: Task, task_index: int, examples: list[Example], max_length: int,
           max_target_length: int, for_generation: bool = False) -> list[Encoded]:
    """Token ids for `examples`. `for_generation` leaves the target out (the prompt is what we feed)."""
    if kind == "classification":
        firsts, seconds = zip(*(_pair(task, e) for e in examples))
        pairs = seconds if any(s is not None for s in seconds) else None
        if pairs is not None:
            pairs = [s or "" for s in seconds]
        enc = tokenizer(list(firsts), pairs, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids")
        return [Encoded(task_index, ids, e.label, types[i] if types else None)
                for i, (ids, e) in enumerate(zip(enc["input_ids"], examples))]
    sources = [task.source_text(e) for e in examples]
    targets = [task.target_text(e) for e in examples]
    if kind == "seq2seq":
        enc = tokenizer(sources, truncation=True, max_length=max_length)
        tgt = tokenizer(text_target=targets, truncation=True, max_length=max_target_length)
        return [Encoded(task_index, ids, list(t)) for ids, t in zip(enc["input_ids"], tgt["input_ids"])]
    if examples and task.causal_layout(examples[0], tokenizer, False) is not None:
        return _encode_layout(tokenizer, task, task_index, examples, max_length, for_generation)
    return _encode_causal(tokenizer, task_index, sources, targets, max_length, max_target_length, for_generation)


def _encode_layout(tokenizer, task, task_index, examples, max_length, for_generation):
    """A seed code base's own layout (`Task.causal_layout`): its ids, token types and labels, cut to the
    last max_length tokens of the input when a row is longer (the seeds' own runs never are)."""
    out = []
    for example in examples:
        ids, types, labels = task.causal_layout(example, tokenizer, not for_generation)
        cut = max(0, len(ids) - max_length) if for_generation else 0
        out.append(Encoded(task_index, ids[cut:], [] if for_generation else labels, types[cut:]))
    return out


def _encode_causal(tokenizer, task_index, sources, targets, max_length, max_target_length, for_generation):
    prompts = tokenizer([s + ANSWER for s in sources])["input_ids"]
    answers = tokenizer([" " + t for t in targets], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for prompt, answer in zip(prompts, answers):
        prompt = prompt[-max_length:]            # keep the end: it holds the answer cue
        if for_generation:
            out.append(Encoded(task_index, prompt, []))
            continue
        answer = answer[: max_target_length - 1] + ([eos] if eos is not None else [])
        out.append(Encoded(task_index, prompt + answer, [IGNORE] * len(prompt) + answer))
    return out


def label_count(kind: str, items: list[Encoded]) -> int:
    """What the loss averages over: examples (classification) or target tokens (text-to-text)."""
    if kind == "classification":
        return len(items)
    return sum(sum(1 for t in item.labels if t != IGNORE) for item in items)


def collate(kind: str, items: list[Encoded], pad_id: int, regression: bool = False,
            left_pad: bool = False, pad_to: int | None = None) -> dict:
    """A padded batch. Decoder prompts for generation are left-padded so that outputs follow them.
    `pad_to`: pad every row to this length (the seeds' pad_to_max_length), not to the batch's longest."""
    width = max(max(len(i.input_ids) for i in items), pad_to or 0)

    def pad(seq, value):
        fill = [value] * (width - len(seq))
        return fill + list(seq) if left_pad else list(seq) + fill

    batch = {
        "input_ids": torch.tensor([pad(i.input_ids, pad_id) for i in items]),
        "attention_mask": torch.tensor([pad([1] * len(i.input_ids), 0) for i in items]),
        "task_ids": torch.tensor([i.task for i in items]),
    }
    if items[0].token_type_ids is not None:
        batch["token_type_ids"] = torch.tensor([pad(i.token_type_ids, 0) for i in items])
    if kind == "classification":
        dtype = torch.float if regression else torch.long
        batch["labels"] = torch.tensor([i.labels for i in items], dtype=dtype)
    elif kind == "seq2seq":
        target_width = max(len(i.labels) for i in items)
        batch["labels"] = torch.tensor([list(i.labels) + [IGNORE] * (target_width - len(i.labels))
                                        for i in items])
    elif any(i.labels for i in items):
        batch["labels"] = torch.tensor([pad(i.labels, IGNORE) for i in items])
    return batch
