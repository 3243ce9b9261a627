"""Predictions and metrics for one task's examples: argmax / score from a classification head, or
greedy generation parsed back into a label for text-to-text models."""
from __future__ import annotations

import torch

import peftlab as pl

from ..tasks import Example, Task, compute_metrics
from .data import collate, encode


@torch.no_grad()
def predict(model, tokenizer, kind: str, task: Task, task_index: int, examples: list[Example],
            max_length: int, max_target_length: int, batch_size: int, adapter: str | None = None,
            task_ids: bool = False, pad_to: int | None = None) -> list:
    """One prediction per example: a class index, a score, or a text (generation tasks)."""
    if adapter is not None:
        pl.activate(model, adapter)
    was_training = model.training
    model.eval()
    encoded = encode(kind, tokenizer, task, task_index, examples, max_length, max_target_length,
                     for_generation=True)
    out: list = []
    try:
        for start in range(0, len(encoded), batch_size):
            items = encoded[start: start + batch_size]
            batch = collate(kind, items, tokenizer.pad_token_id, task.kind == "regression",
                            left_pad=kind == "causal", pad_to=pad_to)
            batch.pop("labels", None)
            ids = batch.pop("task_ids")
            if task_ids:
                batch["task_ids"] = ids
            batch = {k: v.to(_device(model)) for k, v in batch.items()}
            out.extend(_predict_batch(model, tokenizer, kind, task, batch, max_target_length))
    finally:
        model.train(was_training)
    return out


def _predict_batch(model, tokenizer, kind, task, batch, max_target_length) -> list:
    if kind == "classification":
        logits = model(**batch).logits
        if task.kind == "regression":
            return logits.squeeze(-1).float().tolist()
        return logits.argmax(-1).tolist()
    stops = task.stop_token_ids(tokenizer)
    extra = {} if stops is None else {"eos_token_id": stops}
    generated = model.generate(**batch, max_new_tokens=max_target_length, do_sample=False, num_beams=1, **extra)
    if kind == "causal":
        generated = generated[:, batch["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [task.parse_target(t) for t in texts]


def evaluate(model, tokenizer, kind, task, task_index, examples, max_length, max_target_length,
             batch_size, adapter=None, task_ids=False, pad_to=None) -> dict[str, float]:
    predictions = predict(model, tokenizer, kind, task, task_index, examples, max_length, max_target_length,
                          batch_size, adapter, task_ids, pad_to)
    return compute_metrics(task, predictions, examples)


def _device(model) -> torch.device:
    return next(model.parameters()).device
