"""The token file behind benchmarks/quality_peers.py: every library's workers read the same token ids,
batch order, classifier init and prompt-init ids from it, so nothing a library's own version of
transformers does (tokenizer, default head init, data order) can differ between them.

Rows: the DESIGN §5 splits (`peftlab.tasks.load_splits(..., policy="paper")`), the first N training
rows and the first N test rows of a budget. Tokenisation: peftlab's own encoder for classification
(`peftlab.train.data.encode`: sentence or sentence pair, truncated to max_length) with MiniLM's
tokenizer, run once here. Batches: each epoch a seeded permutation, cut into chunks of 50 batches whose
rows are sorted by length (HF's `group_by_length` idea), the batches then shuffled: padding drops to a
few tokens per row, which on a CPU is most of a step's cost, and every library sees the same batches.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

GROUP = 50                  # batches per length-sorted chunk
CALIBRATION_STEPS = 3       # timed steps per calibration run (plus one untimed first step)
INIT_STD = 0.02             # BERT's initializer_range: the classifier's weights, biases zero
# prompt tuning's init text (Lester et al.'s text / class-label init; all three libraries support it)
PROMPT_TEXT = {"sst2": "Is the sentiment of this movie review positive or negative?",
               "rte": "Does the first sentence entail the second sentence? Yes or no?",
               "mrpc": "Do the two sentences say the same thing? Yes or no?"}


@dataclass
class TaskBudget:
    task: str | None = None      # the GLUE task; None: the budget's key (a second budget has its own key)
    train: int | None = None     # the first N training rows (after the split); None: all
    epochs: float = 1.0
    test: int | None = None      # the first N test rows; None: the whole test split
    max_length: int = 128
    batch_size: int = 32


def batch_plan(lengths: list[int], batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Row-index batches for ceil(epochs * batches per epoch) steps, length-grouped (module doc)."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    total = math.ceil(epochs * math.ceil(n / batch_size))
    plan: list[list[int]] = []
    while len(plan) < total:
        order = torch.randperm(n, generator=g).tolist()
        batches = []
        for start in range(0, n, batch_size * GROUP):
            chunk = sorted(order[start:start + batch_size * GROUP], key=lambda i: -lengths[i])
            batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        plan += [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return plan[:total]


def calibration_plan(plan: list[list[int]], lengths: list[int], steps: int = CALIBRATION_STEPS) -> list:
    """A few batches whose mean padded size is the plan's: the plan's batches at evenly spaced quantiles
    of padded tokens, after one untimed first step. Their mean step time x the plan's steps estimates
    a run (the time per step is near-linear in tokens)."""
    size = lambda rows: len(rows) * max(lengths[i] for i in rows)   # noqa: E731
    ranked = sorted(plan, key=size)
    picks = [ranked[min(len(ranked) - 1, int((k + 0.5) * len(ranked) / steps))] for k in range(steps)]
    return [ranked[len(ranked) // 2]] + picks


def head_init(seed: int, num_labels: int, hidden: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(num_labels, hidden, generator=g) * INIT_STD, "bias": torch.zeros(num_labels)}


def encode_split(tokenizer, task, rows: list, max_length: int) -> dict:
    from peftlab.train.data import encode
    encoded = encode("classification", tokenizer, task, 0, rows, max_length, 0)
    return {"input_ids": [e.input_ids for e in encoded],
            "token_type_ids": [e.token_type_ids or [0] * len(e.input_ids) for e in encoded],
            "labels": [int(e.labels) for e in encoded]}


def prompt_ids(tokenizer, text: str, length: int) -> list[int]:
    """The text's ids with [CLS]/[SEP], repeated and cut to `length`: what HF PEFT's TEXT init and
    AdapterHub's from_string init compute from the same text."""
    ids = tokenizer(text)["input_ids"]
    return (ids * math.ceil(length / len(ids)))[:length]


_SPLITS: dict = {}


def _splits(task, data_dir) -> dict:
    """A task's splits, read once per process (a second budget reuses its task's)."""
    from peftlab.tasks import load_splits
    if task.name not in _SPLITS:
        _SPLITS[task.name] = load_splits(task, data_dir, policy="paper")
    return _SPLITS[task.name]


def build_task(key: str, budget: TaskBudget, seeds, data_dir, tokenizer, hidden: int,
               prompt_length: int) -> dict:
    from peftlab.tasks import get_task
    name = budget.task or key
    task = get_task(name)
    splits = _splits(task, data_dir)
    train_rows = splits["train"][:budget.train]
    test_rows = splits["test"][:budget.test]
    out = {"name": name, "key": key, "num_labels": task.num_labels, "pad_id": tokenizer.pad_token_id,
           "budget": asdict(budget),
           "train": encode_split(tokenizer, task, train_rows, budget.max_length),
           "test": encode_split(tokenizer, task, test_rows, budget.max_length),
           "validation": encode_split(tokenizer, task, splits["validation"], budget.max_length)}
    lengths = [len(x) for x in out["train"]["input_ids"]]
    out["plans"] = {str(s): batch_plan(lengths, budget.batch_size, budget.epochs, s) for s in seeds}
    out["calibration_plans"] = {str(s): calibration_plan(out["plans"][str(s)], lengths) for s in seeds}
    out["heads"] = {str(s): head_init(s, task.num_labels, hidden) for s in seeds}
    text = PROMPT_TEXT.get(name, f"What is the answer for {name}?")
    out["prompt"] = {"text": text, "ids": prompt_ids(tokenizer, text, prompt_length)}
    out["stats"] = _stats(out, lengths)
    return out


def _stats(task: dict, lengths: list[int]) -> dict:
    """What the results print about the data: rows, steps, padding, majority class of the test rows."""
    plan = next(iter(task["plans"].values()))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in plan)
    labels = task["test"]["labels"]
    return {"train_rows": len(lengths), "test_rows": len(labels),
            "validation_rows": len(task["validation"]["labels"]), "steps": len(plan),
            "mean_tokens": sum(lengths) / len(lengths), "padded_tokens_per_row": padded / sum(map(len, plan)),
            "majority": 100.0 * Counter(labels).most_common(1)[0][1] / len(labels),
            "train_tokens": padded}


def tiny_model(folder: Path, tokenizer, hidden: int = 128, layers: int = 2) -> str:
    """A random BERT with MiniLM's vocabulary (the --smoke model: 2 layers, hidden 128), saved with the
    tokenizer so that both environments load it like the real one."""
    import transformers as tf
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        # hidden 128: reduction factor 32 gives k = 4, which Compacter's phm_dim 4 divides; 384 (quality.py's
        # smoke): k = 12, which the PHM-Adapter's n = 12 divides too
        config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=256)
        tf.BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def build_data(budgets: dict, seeds, data_dir, work: Path, smoke: bool, prompt_length: int,
               model: str | None = None) -> dict:
    """Everything the workers need, tokenized once; saved by the caller with torch.save. `model`: a local
    folder of all-MiniLM-L6-v2 (a GPU machine without the offline package); default: the package's."""
    import transformers as tf
    from peftlab.models import offline_path
    minilm = model or str(offline_path("minilm"))
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm)
    model_path = tiny_model(work / "tiny-bert-h128", tokenizer) if smoke else minilm
    hidden = tf.AutoConfig.from_pretrained(model_path).hidden_size
    tasks = {name: build_task(name, budget, seeds, data_dir, tokenizer, hidden, prompt_length)
             for name, budget in budgets.items()}
    return {"model_path": model_path, "tokenizer_path": model_path, "tasks": tasks}
