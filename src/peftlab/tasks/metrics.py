"""Task metrics from well-kept libraries: scikit-learn (accuracy, F1, MCC), scipy (Pearson, Spearman),
sacrebleu (BLEU), rouge-score (ROUGE-L). Every value is in [0, 1] (BLEU is divided by 100), so that the
average over metrics and tasks, which picks the best checkpoint, weighs them alike."""
from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict

from .base import Example, Task


def compute_metrics(task: Task, predictions: list, examples: list[Example]) -> dict[str, float]:
    """The task's metrics, each a float; `predictions` are label indices, scores or texts."""
    out = {}
    for name in task.metrics:
        out[name] = float(_METRICS[name](predictions, examples))
    return out


def average(metrics: dict[str, float]) -> float:
    values = [v for v in metrics.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def _labels(examples):
    return [e.label for e in examples]


def accuracy(predictions, examples):
    from sklearn.metrics import accuracy_score   # optional extra ([tasks]): imported only when the metric is used
    if examples and isinstance(examples[0].label, str):
        return exact_match(predictions, examples)
    return accuracy_score(_labels(examples), predictions)


def f1(predictions, examples):
    """Binary F1 of the positive class (MRPC, QQP, MultiRC's F1 over all answers)."""
    from sklearn.metrics import f1_score   # optional extra ([tasks]): imported only when the metric is used
    if isinstance(examples[0].label, str):
        return token_f1(predictions, examples)
    labels = _labels(examples)
    # an unparseable generated label (-1) counts as wrong: the opposite of the gold label
    predictions = [p if p in (0, 1) else 1 - y for p, y in zip(predictions, labels)]
    return f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0)


def macro_f1(predictions, examples):
    from sklearn.metrics import f1_score   # optional extra ([tasks]): imported only when the metric is used
    labels = sorted({e.label for e in examples} | {p for p in predictions if p != -1})
    return f1_score(_labels(examples), predictions, labels=labels, average="macro", zero_division=0.0)


def mcc(predictions, examples):
    from sklearn.metrics import matthews_corrcoef   # optional extra ([tasks]): imported only when the metric is used
    return matthews_corrcoef(_labels(examples), predictions)


def _scores(predictions, examples):
    # An unparseable generated score counts as 0, so a bad model is scored, not crashed.
    return [0.0 if p is None else float(p) for p in predictions], [float(e.label) for e in examples]


def pearson(predictions, examples):
    from scipy.stats import pearsonr   # optional extra ([tasks]): imported only when the metric is used
    x, y = _scores(predictions, examples)
    return _finite(pearsonr(x, y)[0]) if len(set(x)) > 1 else 0.0


def spearman(predictions, examples):
    from scipy.stats import spearmanr   # optional extra ([tasks]): imported only when the metric is used
    x, y = _scores(predictions, examples)
    return _finite(spearmanr(x, y)[0]) if len(set(x)) > 1 else 0.0


def _finite(value):
    return float(value) if math.isfinite(value) else 0.0


def exact_match(predictions, examples):
    """Grouped EM when examples have groups of several rows (MultiRC: every answer of a question
    right); otherwise the share of predictions equal to (one of) the references."""
    if examples and not isinstance(examples[0].label, str):
        groups = defaultdict(list)
        for p, e in zip(predictions, examples):
            groups[e.group if e.group is not None else id(e)].append(p == e.label)
        return sum(all(v) for v in groups.values()) / len(groups)
    hits = [max(_norm(p) == _norm(r) for r in (e.references or (e.label,))) for p, e in zip(predictions, examples)]
    return sum(hits) / len(hits)


def token_f1(predictions, examples):
    """SQuAD-style token F1 against the best reference (ReCoRD)."""
    def one(pred, ref):
        p, r = _norm(pred).split(), _norm(ref).split()
        common = sum((Counter(p) & Counter(r)).values())
        if not common:
            return 0.0
        precision, recall = common / len(p), common / len(r)
        return 2 * precision * recall / (precision + recall)
    scores = [max(one(p, r) for r in (e.references or (e.label,))) for p, e in zip(predictions, examples)]
    return sum(scores) / len(scores)


def _norm(text) -> str:
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def bleu(predictions, examples):
    import sacrebleu   # optional extra ([tasks]): imported only when the metric is used
    refs = [list(e.references or (e.label,)) for e in examples]
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]
    return sacrebleu.corpus_bleu([str(p) for p in predictions], streams).score / 100


def rouge_l(predictions, examples):
    from rouge_score import rouge_scorer   # optional extra ([tasks]): imported only when the metric is used
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [max(scorer.score(r, str(p))["rougeL"].fmeasure for r in (e.references or (e.label,)))
              for p, e in zip(predictions, examples)]
    return sum(scores) / len(scores)


_METRICS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc, "pearson": pearson,
            "spearman": spearman, "exact_match": exact_match, "bleu": bleu, "rougeL": rouge_l}
