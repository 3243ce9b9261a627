"""The training loop on Accelerate: setup, step, evaluate, save. One recipe for every method and task.

Under `accelerate launch` each process takes its rows of every global batch (see batches.py); the
main process alone evaluates, writes logs and checkpoints, and broadcasts its decisions.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed

import peftlab as pl

from ..core import base_parameter_count
from ..errors import PeftlabError
from ..files import atomic_write
from ..tasks import average, load_splits
from . import checkpoint as ckpt
from .allocator import keep_freed_memory
from .batches import batches_per_epoch, epoch_batches, shard
from .data import collate, encode, label_count
from .evaluations import Evaluations
from .frozen_grads import FrozenGradients
from .logs import MIXING, RunLog, observe_mixing
from .modeling import build_model, trainable_state, uses_task_ids, zero_old_rows
from .optim import build_optimizer, clip_gradients, gradient_norm, loss_sum
from .progress import Progress
from .report import averages, write_report
from .rundir import RunFolder
from .schema import RunConfig, check_resumable

DIVERGING = 100           # a loss this many times its start is reported as diverging
FRESH_STATE = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None,
               "bad_evals": 0, "examples": 0, "last_loss": None, "train_loss": None}


def mixed_precision(name: str) -> str:
    """Accelerate's setting: fp16 needs a GPU (CPU autocast has no float16 path): on a CPU it runs as
    bf16, which the run's log says."""
    if name == "fp16" and not torch.cuda.is_available():
        logging.getLogger("peftlab").warning("train.precision fp16 needs a GPU: running as bf16 on this CPU")
        return "bf16"
    return {"fp32": "no"}.get(name, name)


class Trainer(Evaluations):
    def __init__(self, config: RunConfig, resume: bool = False):
        self.config, self.resume = config, resume
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.keep_freed_memory:
            keep_freed_memory()
        precision = mixed_precision(config.train.precision)
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=config.adapters == "per_task")]
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # Accelerate keeps one global state per process; a second run in the same process (tests,
            # notebooks) may ask for another precision, so start from a clean one when not launched.
            AcceleratorState._reset_state(reset_partial_state=True)
        # cpu=True where there is no GPU: it is what makes `accelerate launch --multi_gpu` on a CPU
        # machine start gloo (MULTI_CPU) instead of N unrelated single processes.
        self.accelerator = Accelerator(mixed_precision=precision, kwargs_handlers=handlers,
                                       cpu=not torch.cuda.is_available())
        self.main = self.accelerator.is_main_process
        self.run_dir = Path(config.output_dir)
        self.folder = RunFolder(config.output_dir)
        self.folder.check(resume, config.overwrite)     # refuse early; nothing is written before setup
        if resume:
            check_resumable(self.run_dir / "config.json", config)
        self.tasks = config.task_list()
        self.splits = [load_splits(t, config.data.dir, config.data.splits, config.data.max_train_samples,
                                   config.data.max_eval_samples, config.data.report_mismatched) for t in self.tasks]
        set_seed(config.train.seed)
        self.model, self.tokenizer, self.kind = build_model(config, self.tasks)
        self.task_ids = uses_task_ids(self.model)
        # mixing weights are probed on validation rows at each log; a model whose first probe records none
        # has no mixing module (attachments are fixed for the run), so later logs skip the extra forward
        self.probe_mixing = True
        self.validation_items = None      # for train.select_metric: loss
        self.adapter_names = list(pl.adapters(self.model))
        self.train_sets = [encode(self.kind, self.tokenizer, t, i, s["train"], config.model.max_length,
                                  config.model.max_target_length) for i, (t, s) in enumerate(zip(self.tasks, self.splits))]
        sizes = [len(s) for s in self.train_sets]
        per_epoch = self.per_epoch = batches_per_epoch(sizes, config.train.batch_size)
        self.total_steps = config.train.max_steps or math.ceil(config.train.epochs * per_epoch)
        self.optimizer, self.scheduler = build_optimizer(self.model, config.train, self.total_steps)
        if config.train.clip_frozen_gradients and self.accelerator.num_processes > 1:
            raise PeftlabError("train.clip_frozen_gradients runs on one process (nlprunners' runscript.py does)")
        self.frozen = FrozenGradients(self.model, config.train.clip_frozen_gradients)
        self.ddp_model = self.accelerator.prepare(self.model)
        self.state = dict(FRESH_STATE)
        self._take_run_dir()
        self._open_run()

    # --- setup ------------------------------------------------------------------------------------
    def _open_run(self) -> None:
        """The log, the restored checkpoint (on resume), the config as run; a failure releases the folder."""
        try:
            self.log = RunLog(self.run_dir, self.main, self.config.train.tensorboard)
            if self.resume:
                self._restore()
            self._record_config()
        except BaseException:
            self.folder.release()
            raise

    def _take_run_dir(self) -> None:
        """Everything is built: only now may the folder change (an overwritten run is replaced by one
        that started). The main process takes and locks it; the others wait."""
        if self.main:
            self.folder.take(self.resume, self.config.overwrite)
        self.accelerator.wait_for_everyone()

    def _record_config(self) -> None:
        """Keys safe to change on resume (check_resumable) are recorded as now run, once the checkpoint is
        restored: a resume refused on a damaged checkpoint leaves the saved config as it was."""
        if self.main:
            text = json.dumps(self.config.to_dict(), indent=2)
            atomic_write(self.run_dir / "config.json", lambda tmp: Path(tmp).write_text(text))

    def _restore(self) -> None:
        last = self.run_dir / "checkpoints" / "last"
        state = ckpt.load_weights(self.model, last)
        missing = [key for key in FRESH_STATE if key not in state]
        if missing:
            raise PeftlabError(f"{last / ckpt.STATE}: not a complete trainer state (no '{missing[0]}')")
        self.state = state
        extra = ckpt.load_training_state(last, self.optimizer, self.scheduler)
        self.frozen.load_state_dict(extra.get("frozen_gradients", {}), last / ckpt.OPTIMIZER)
        self.log.truncate_after(self.state["step"])

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, state = self.config.train, self.state
        sizes = [len(s) for s in self.train_sets]
        bar = self._progress_bar()
        started, seen_at_start = time.perf_counter(), state["examples"]
        window: list[float] = []
        while state["step"] < self.total_steps:
            batches = epoch_batches(sizes, cfg.batch_size, cfg.seed, state["epoch"], self.config.data.temperature,
                                    self.config.data.mixing)
            for index in range(state["batch_in_epoch"], len(batches)):
                loss = self._train_step(batches[index])
                state["step"] += 1
                state["batch_in_epoch"] = index + 1
                state["examples"] += len(batches[index])
                self._stop_if_not_finite(loss)
                window.append(loss)
                rate = (state["examples"] - seen_at_start) / max(time.perf_counter() - started, 1e-9)
                if bar is not None:
                    bar.update(state["step"], loss, rate)
                if state["step"] % cfg.log_steps == 0 or state["step"] == self.total_steps:
                    self._log_train(window, rate)
                    window = []
                end_of_epoch = index == len(batches) - 1
                stop = self._maybe_evaluate(end_of_epoch)
                ckpt.fault_point("after", state["step"])
                if stop or state["step"] >= self.total_steps:
                    break
            else:
                state["epoch"], state["batch_in_epoch"] = state["epoch"] + 1, 0
                continue
            break
        if bar is not None:
            bar.close()
        if window:
            self._log_train(window, rate)
        wall = time.perf_counter() - started
        self._save(best=False, final=True)
        self.accelerator.wait_for_everyone()
        return {"steps": state["step"], "epochs": state["step"] / max(batches_per_epoch(sizes, cfg.batch_size), 1),
                "final_loss": state.get("train_loss", state["last_loss"]), "last_batch_loss": state["last_loss"],
                "wall_s": wall,
                "examples_per_s": (state["examples"] - seen_at_start) / max(wall, 1e-9)}

    def _progress_bar(self) -> Progress | None:
        if not (self.main and self.config.train.progress_bar):
            return None
        return Progress(self.total_steps, self.state["step"])

    def _train_step(self, batch: list) -> float:
        """One optimizer step over a global batch; returns the global mean loss."""
        acc = self.accelerator
        micro = shard(batch, acc.process_index, acc.num_processes, self.config.train.gradient_accumulation_steps)
        weight = 1.0
        if not micro:               # fewer rows than processes: join the all-reduce with a zero loss
            micro, weight = [[batch[0]]], 0.0
        items_of = lambda rows: [self.train_sets[t][i] for t, i in rows]  # noqa: E731
        denominator = label_count(self.kind, items_of(batch))
        self.model.train()
        total = torch.zeros((), dtype=torch.float64)
        for k, rows in enumerate(micro):
            last = k == len(micro) - 1
            with (nullcontext() if last else acc.no_sync(self.ddp_model)), self.frozen.recording():
                summed = self._forward_loss(items_of(rows))
                acc.backward(summed * (weight * acc.num_processes / max(denominator, 1)))
            total += summed.detach().double() * weight
        step = self.state["step"] + 1
        if not math.isfinite(float(total)):     # stop before the optimizer spoils the weights
            self._stop(f"loss is {float(total) / max(denominator, 1)}", step)
        trained = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        norm = gradient_norm(trained, self.frozen.tensors())
        if not torch.isfinite(norm):
            self._stop(self._first_non_finite_gradient(), step)
        ckpt.fault_point("step", step)           # test hook: a kill in the middle of a step
        clip_gradients(trained, self.config.train.max_grad_norm, norm)
        self.frozen.scale(self.config.train.max_grad_norm, norm)
        zero_old_rows(self.model)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = acc.reduce(total.to(acc.device), reduction="sum") if acc.num_processes > 1 else total
        return float(total) / max(denominator, 1)

    def _forward_loss(self, items, smoothing: float | None = None) -> torch.Tensor:
        task = self.tasks[items[0].task]
        if self.config.adapters == "per_task":
            pl.activate(self.model, self.adapter_names[items[0].task])
        batch = collate(self.kind, items, self.tokenizer.pad_token_id, task.kind == "regression",
                        pad_to=self.pad_to())
        labels = batch.pop("labels")
        task_ids = batch.pop("task_ids")
        if self.task_ids:
            batch["task_ids"] = task_ids
        if self.kind == "seq2seq":
            batch["labels"] = labels       # the model derives decoder inputs from them
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        logits = self.ddp_model(**batch).logits
        return loss_sum(self.kind, logits, labels.to(logits.device), task.kind == "regression",
                        self.config.train.label_smoothing if smoothing is None else smoothing)

    def _stop_if_not_finite(self, loss: float) -> None:
        if math.isfinite(loss):
            self.state["last_loss"] = loss
            return
        self._stop(f"loss is {loss}", self.state["step"])

    def _stop(self, what: str, step: int) -> None:
        last = self.run_dir / "checkpoints" / "last"
        kept = f"last good checkpoint: {last} (step {ckpt.load_state(last)['step']})" \
            if ckpt.has_checkpoint(self.run_dir) else "no checkpoint was saved yet"
        raise PeftlabError(f"{what} at step {step}: stopped; {kept}")

    def _first_non_finite_gradient(self) -> str:
        """Names the first parameter (in optimizer order) whose gradient is not finite, and its group."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    bad = param.grad[~torch.isfinite(param.grad)][0].item()
                    return f"gradient of '{names.get(id(param), '?')}' (parameter group " \
                           f"'{group.get('name', '?')}') is {bad}"
        return "gradient norm is not finite"

    def _epochs_done(self) -> float:
        """Epochs trained so far, fractional (a 1-epoch run logs 0.1, 0.2, ..., not 0 throughout)."""
        return round(self.state["epoch"] + self.state["batch_in_epoch"] / max(self.per_epoch, 1), 4)

    def _log_train(self, window: list[float], rate: float) -> None:
        record = {"kind": "train", "step": self.state["step"], "epoch": self._epochs_done(),
                  "loss": sum(window) / len(window), "lr": self.scheduler.get_last_lr()[0],
                  "examples_per_s": rate}
        self.state["train_loss"] = record["loss"]   # the smoothed loss the log shows, for the report
        self.log.write(record)
        self._warn_if_diverging(record["loss"])
        if self.main and self.probe_mixing:
            seen = observe_mixing(self.model, self.probe_batch())
            if seen:
                self.log.write({"step": self.state["step"], "series": seen}, MIXING)
            self.probe_mixing = bool(seen)

    def _warn_if_diverging(self, loss: float) -> None:
        """A loss grown past DIVERGING times its first logged value: say so (log, console, report)."""
        start = self.state.setdefault("first_loss", loss)
        warned = self.state.setdefault("warnings", [])
        if start > 0 and loss > DIVERGING * start and not warned:
            message = (f"the training loss {loss:.4g} is over {DIVERGING}x its start {start:.4g} at step "
                       f"{self.state['step']}: diverging? try a lower learning rate")
            warned.append(message)
            self.log.write({"kind": "warning", "step": self.state["step"], "message": message})
            logging.getLogger("peftlab").warning(message)

    # --- evaluation and checkpoints -----------------------------------------------------------------
    def _maybe_evaluate(self, end_of_epoch: bool) -> bool:
        """Evaluate / checkpoint when due; returns whether early stopping says stop (same on all ranks)."""
        cfg, step = self.config.train, self.state["step"]
        last = step == self.total_steps and cfg.evaluate_last_step
        due = (cfg.eval_strategy == "steps" and ((step + cfg.eval_offset) % cfg.eval_steps == 0 or last)) or \
              (cfg.eval_strategy == "epoch" and (end_of_epoch or last))
        if not due and not (cfg.eval_strategy == "no" and step % cfg.eval_steps == 0):
            return False
        decision = [None]
        if self.main:
            improved = due and self._record_evaluation()
            ckpt.fault_point("eval", step)        # test hook: evaluated and logged, not yet saved
            self._save(best=improved)
            patience = cfg.early_stopping_patience
            decision = [{"stop": patience is not None and self.state["bad_evals"] >= patience,
                         "state": dict(self.state)}]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(decision)
        self.state.update(decision[0]["state"])
        return decision[0]["stop"]

    def _record_evaluation(self) -> bool:
        record = {"kind": "eval", "step": self.state["step"], "epoch": self._epochs_done()}
        if self.config.train.select_metric == "loss":     # kernel-adapters' NLG: lowest validation perplexity
            loss = self.validation_loss()
            scores, score = None, -loss
            record.update(validation_loss=loss, perplexity=math.exp(min(loss, 700.0)))
        else:
            scores = self.evaluate_split("validation")
            chosen = self.config.train.select_on
            score = average(scores[chosen]) if chosen else sum(average(m) for m in scores.values()) / len(scores)
            record.update({f"{task}/{name}": value for task, m in scores.items() for name, value in m.items()})
        record["average"] = score
        self.log.write(record)
        best = self.state["best"]
        improved = best is None or (math.isfinite(score) and score > best)
        if improved:
            self.state.update(best=score, best_step=self.state["step"], bad_evals=0, best_scores=scores)
        else:
            self.state["bad_evals"] += 1
        return improved

    def _save(self, best: bool, final: bool = False) -> None:
        """Write `last` (and `best`): the main process only, with no barrier, since callers differ
        in what the other processes do meanwhile. The adapter folder holds the best weights, or the
        final ones when no evaluation chose a best (eval_strategy: no)."""
        if not self.main:
            return
        weights = trainable_state(self.model)
        bad = next((n for n, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:     # never replace a good checkpoint with a diverged one
            self._stop(f"parameter '{bad}' is not finite", self.state["step"])
        root = self.run_dir / "checkpoints"
        # best before last: a kill in between resumes from the previous `last`, which redoes (and
        # rewrites identically) this best; the other order could leave a state naming a best not on disk
        if best:
            ckpt.save_checkpoint(root / "best", weights, self.state)
        if best or (final and self.state["best_step"] is None):
            for name in self.adapter_names:
                pl.save(self.model, self.run_dir / "adapter" / name, name=name)
        ckpt.save_checkpoint(root / "last", weights, self.state, self.optimizer, self.scheduler,
                             self.config.train.keep_last, {"frozen_gradients": self.frozen.state_dict()})

    def run(self) -> dict | None:
        """Train, then evaluate the best checkpoint on validation and test (eval_strategy: no, the final
        weights on test only); write results and report."""
        try:
            summary = self.fit() if self.config.do_train else self.skip_training()
            results = None
            if self.main:
                if self.state["best_step"] is not None:
                    ckpt.load_weights(self.model, self.run_dir / "checkpoints" / "best")
                results = self._results(summary)
            self.accelerator.wait_for_everyone()
        finally:
            self.log.close()
            self.folder.release()
        return results

    def skip_training(self) -> dict:
        """do_train: false (the seeds' evaluation-only configs): save the model as built, train nothing."""
        self._save(best=False, final=True)
        self.accelerator.wait_for_everyone()
        return {"steps": 0, "epochs": 0.0, "final_loss": None, "last_batch_loss": None, "wall_s": 0.0,
                "trained": False}

    def _results(self, summary: dict) -> dict:
        per_task: dict = {t.name: {} for t in self.tasks}
        # eval_strategy: no asks for no validation: no checkpoint is chosen on it, so test is the result
        splits = ("test",) if self.config.train.eval_strategy == "no" else ("validation", "test")
        for split in splits:
            # the best checkpoint's validation scores are known already: skip re-evaluating them
            same_budget = self.generation_budget(True) == self.generation_budget(False)
            known = self.state.get("best_scores") if split == "validation" and same_budget else None
            for task, metrics in (known or self.evaluate_split(split, final=True)).items():
                per_task[task][split] = metrics
        # splits reported at the end only (MNLI's mismatched dev set: data.report_mismatched)
        for split in sorted({s for splits in self.splits for s in splits} - {"train", "validation", "test"}):
            for task, metrics in self.evaluate_split(split, final=True).items():
                per_task[task][split] = metrics
        trainable, total = pl.trainable_parameters(self.model)
        results = {"tasks": per_task, "average": averages(per_task), "model": self.config.model.name,
                   "method": self.config.method.get("method"), "trainable": trainable, "total": total,
                   "base": base_parameter_count(self.model), "best_step": self.state["best_step"],
                   "train": summary, "processes": self.accelerator.num_processes,
                   "warnings": list(self.state.get("warnings", []))}
        write_report(self.run_dir, results)
        return results

