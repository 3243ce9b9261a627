"""The one training loop every library's runs go through in benchmarks/quality_peers.py, and the worker
shell around it. Imports torch and transformers only, never peftlab: the AdapterHub worker runs it under
transformers 4.57 in benchmarks/.venv-adapters, the peftlab / HF PEFT worker under transformers 5 in
.venv. Everything that must be identical across libraries (token ids, batch order, head init, optimizer,
schedule, clipping, evaluation) lives here or in the data file, so a library only says how it attaches
its method (`attach(model, job) -> (module to call, trainable parameters)`).

    python <worker> --jobs jobs.json --data data.pt --out results.jsonl [--threads 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from contextlib import nullcontext

import torch

WARMUP_RATIO = 0.06
MAX_GRAD_NORM = 1.0
EVAL_BATCH = 64


def load_data(path: str) -> dict:
    return torch.load(path, weights_only=True)


def make_batch(split: dict, rows: list[int], pad_id: int, device) -> dict:
    """Right-padded batch of the given rows (pad to the longest row: the batch plan groups rows of
    similar length, so padding stays small)."""
    ids = [split["input_ids"][i] for i in rows]
    types = [split["token_type_ids"][i] for i in rows]
    width = max(len(x) for x in ids)
    pad = lambda seq, value: list(seq) + [value] * (width - len(seq))   # noqa: E731
    batch = {"input_ids": torch.tensor([pad(x, pad_id) for x in ids]),
             "attention_mask": torch.tensor([pad([1] * len(x), 0) for x in ids]),
             "token_type_ids": torch.tensor([pad(t, 0) for t in types]),
             "labels": torch.tensor([split["labels"][i] for i in rows])}
    return {k: v.to(device) for k, v in batch.items()}


def linear_schedule(optimizer, steps: int):
    """Linear warmup over the first 6 % of the steps, then linear decay to zero (HF's linear schedule)."""
    warmup = max(1, round(WARMUP_RATIO * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: str, bf16: bool):
    """bf16 autocast on CUDA when the job allows it; parameters and optimizer state stay float32."""
    if bf16 and device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(model, params: list, task: dict, plan: list, lr: float, device: str, bf16: bool,
          max_steps: int | None = None) -> dict:
    """AdamW (torch, fused where it can be) over `plan` (a list of row-index batches), with the linear
    schedule and gradient clipping at 1.0. Returns the loss curve's ends and the time per step."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)
    plan = plan[:max_steps] if max_steps else plan
    schedule = linear_schedule(optimizer, len(plan))
    model.train()
    losses, times, tokens = [], [], 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for rows in plan:
        step_start = time.perf_counter()
        batch = make_batch(task["train"], rows, task["pad_id"], device)
        with autocast(device, bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))     # a sync point, so the step's time is its own
        times.append(time.perf_counter() - step_start)
        tokens += batch["input_ids"].numel()
    _sync(device)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    tail = losses[-max(1, len(losses) // 10):]
    later = times[1:] or times       # the first step pays one-off costs (allocations, lazy init)
    return {"steps": len(plan), "train_s": elapsed, "s_per_step": elapsed / max(1, len(plan)),
            "s_per_step_after_first": sum(later) / len(later), "tokens": tokens,
            "cpu_s_per_step": cpu / max(1, len(plan)),      # with one thread: the work, without waiting for a core
            "loss_first": losses[0], "loss_last10pct": sum(tail) / len(tail),
            "finite": all(math.isfinite(x) for x in losses)}


@torch.no_grad()
def evaluate(model, task: dict, split: str, device: str, bf16: bool, limit: int | None = None) -> dict:
    """Accuracy of argmax(logits) on the (first `limit`) rows of `split`, in length-sorted batches."""
    rows = task[split]
    count = min(limit or len(rows["labels"]), len(rows["labels"]))
    order = sorted(range(count), key=lambda i: len(rows["input_ids"][i]))
    model.eval()
    correct, started = 0, time.perf_counter()
    for start in range(0, len(order), EVAL_BATCH):
        chunk = order[start:start + EVAL_BATCH]
        batch = make_batch(rows, chunk, task["pad_id"], device)
        labels = batch.pop("labels")
        with autocast(device, bf16):
            logits = model(**batch).logits
        correct += int((logits.float().argmax(-1) == labels).sum())
    _sync(device)
    return {"accuracy": 100.0 * correct / len(order), "eval_s": time.perf_counter() - started,
            "eval_rows": len(order)}


def load_model(model_path: str, head: dict, num_labels: int, device: str):
    """The base model with the run's classifier init (the same tensors for every library)."""
    import transformers as tf
    tf.logging.set_verbosity_error()
    model = tf.AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    with torch.no_grad():
        model.classifier.weight.copy_(head["weight"])
        model.classifier.bias.copy_(head["bias"])
    return model.to(device)


def count(model, params: list, base: int, head: int) -> dict:
    trainable = sum(p.numel() for p in params)
    return {"trainable": trainable, "base": base, "method_params": trainable - head,
            "percent": 100.0 * (trainable - head) / base}


def run_job(job: dict, data: dict, attach, device: str) -> dict:
    """One run: seed, build, attach, train, test. `attach(model, job)` -> (module, trainable params)."""
    task = data["tasks"][job["task"]]
    seed = job["seed"]
    torch.manual_seed(seed)      # adapter init and dropout; the data order and the head come from the file
    model = load_model(data["model_path"], task["heads"][str(seed)], task["num_labels"], device)
    base = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.classifier.parameters())
    module, params = attach(model, job)
    if job.get("train_pooler"):      # the pooler check: BERT's pooler trains with the method (and its lr)
        pooler = [p for p in model.base_model.pooler.parameters() if not any(p is q for q in params)]
        params = params + [p.requires_grad_(True) for p in pooler]
    module.to(device)
    record = {**count(module, params, base, head)}
    plan = task["calibration_plans" if job.get("calibrate") else "plans"][str(seed)]
    record.update(train(module, params, task, plan, job["lr"], device, job.get("bf16", False),
                        job.get("max_steps")))
    record.update(evaluate(module, task, job.get("eval_split", "test"), device, job.get("bf16", False),
                           job.get("eval_limit")))
    return record


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", required=True, help="a JSON list of jobs")
    parser.add_argument("--data", required=True, help="the token file quality_peers.py wrote")
    parser.add_argument("--out", required=True, help="JSON lines, one per finished job (appended)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def worker_main(attachers: dict, environment: dict, argv=None) -> None:
    """Runs every job whose library this worker knows; a job that fails is recorded with its error
    (the first line), so that one library's missing feature leaves a visible hole, not a stopped sweep."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.data)
    jobs = json.loads(open(args.jobs).read())
    for job in jobs:
        started = time.perf_counter()
        record = {key: job[key] for key in ("task", "library", "method", "seed", "lr")}
        record.update({"warmup": True} if job.get("warmup") else {})
        record.update(environment, device=args.device, bf16=job.get("bf16", False))
        try:
            record.update(run_job(job, data, attachers[job["library"]], args.device))
        except Exception as err:     # noqa: BLE001  (recorded, shown in the results)
            message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            record["error"] = message
            print(f"{job['library']} {job['method']} {job['task']} {job['seed']}: {message}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
        record["run_s"] = time.perf_counter() - started
        with open(args.out, "a") as handle:
            handle.write(json.dumps(record) + "\n")
