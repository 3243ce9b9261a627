"""The trainer's evaluations: the validation loss (selection by loss), the probe batch for mixing weights,
and task metrics on a split, with the seeds' padding and generation budgets. A mixin of `Trainer`, which
holds the model, tokenizer, tasks and splits these read."""
from __future__ import annotations

import torch

from .data import collate, encode, label_count
from .evaluate import evaluate


class Evaluations:
    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss per label over every task's validation rows, without label smoothing."""
        cfg, was_training = self.config, self.model.training
        self.model.eval()
        total, labels = 0.0, 0
        if self.validation_items is None:     # encoded once, evaluated at every evaluation
            self.validation_items = [encode(self.kind, self.tokenizer, task, index, split["validation"],
                                            cfg.model.max_length, cfg.model.max_target_length)
                                     for index, (task, split) in enumerate(zip(self.tasks, self.splits))]
        for items in self.validation_items:
            for start in range(0, len(items), cfg.train.eval_batch_size):
                chunk = items[start: start + cfg.train.eval_batch_size]
                total += float(self._forward_loss(chunk, smoothing=0.0))
                labels += label_count(self.kind, chunk)
        self.model.train(was_training)
        return total / max(labels, 1)

    def probe_batch(self) -> dict:
        """A few validation rows per task, for observing mixing weights on a fixed input."""
        items = []
        for index, (task, split) in enumerate(zip(self.tasks, self.splits)):
            items += encode(self.kind, self.tokenizer, task, index, split["validation"][:4],
                            self.config.model.max_length, self.config.model.max_target_length, True)
        batch = collate(self.kind, items, self.tokenizer.pad_token_id, left_pad=self.kind == "causal",
                        pad_to=self.pad_to())
        batch.pop("labels", None)
        task_ids = batch.pop("task_ids")
        if self.task_ids:
            batch["task_ids"] = task_ids
        if self.kind == "seq2seq":
            batch["decoder_input_ids"] = torch.full((len(items), 1), self.model.config.decoder_start_token_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def evaluate_split(self, split: str, final: bool = False) -> dict[str, dict[str, float]]:
        cfg = self.config
        budget = self.generation_budget(final)
        out = {}
        for index, (task, splits) in enumerate(zip(self.tasks, self.splits)):
            if split not in splits:
                continue
            adapter = self.adapter_names[index] if cfg.adapters == "per_task" else None
            out[task.name] = evaluate(self.model, self.tokenizer, self.kind, task, index, splits[split],
                                      cfg.model.max_length, budget, cfg.train.eval_batch_size, adapter,
                                      self.task_ids, self.pad_to())
        return out

    def pad_to(self) -> int | None:
        return self.config.model.max_length if self.config.data.pad_to_max_length else None

    def generation_budget(self, final: bool) -> int:
        """New tokens a text-to-text evaluation may generate: the seeds generate at most 20 during training
        and 128 at the end (compacter seq2seq_trainer.py:67-76, run_seq2seq.py:541-556)."""
        model = self.config.model
        during = model.eval_max_new_tokens or model.max_target_length
        return (model.final_max_new_tokens or during) if final else during
