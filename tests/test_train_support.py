"""Helpers for the runner tests (no tests here): tiny task files in every official format, and tiny
random models saved with a word-level tokenizer, so that configs run offline in seconds."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

import transformers as tf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tiny import tiny_config

WORDS = ("the film is good bad great awful a movie plot actor story was not very fun dull bright dark man "
         "woman dog cat runs sees likes hates city park food cheap expensive near river pub cafe yes no "
         "question answer passage word true false it he she they").split()
SPECIAL = ["<pad>", "</s>", "<s>", "<unk>", "[CLS]", "[SEP]"]
SCORES = [f"{i / 5:.1f}" for i in range(26)]
ROWS = {"train": 24, "validation": 12}


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_task_files(root: Path, rows: dict = ROWS, seed: int = 0) -> Path:
    """Official-format files for every GLUE, SuperGLUE and E2E task under `root`."""
    rng = random.Random(seed)
    for split, n in rows.items():
        _glue(root / "glue", split, n, rng)
        _superglue(root / "superglue", split, n, rng)
        _e2e(root / "nlg" / "e2e", split, n, rng)
        _others(root / "others", split, n, rng)
        _webnlg(root / "nlg" / "webnlg_challenge_2017", split, n, rng)
    return root


def _others(root: Path, split: str, n: int, rng) -> None:
    """ATTEMPT's other tasks in their official formats (PAWS, WinoGrande, SciTail, Yelp polarity)."""
    s = lambda: sentence(rng)  # noqa: E731
    paws = "train.tsv" if split == "train" else "dev.tsv"
    for name in ((paws, "test.tsv") if split != "train" else (paws,)):
        _tsv(root / "paws" / name, ("id", "sentence1", "sentence2", "label"), [(i, s(), s(), i % 2) for i in range(n)])
    wino = "train_xl.jsonl" if split == "train" else "dev.jsonl"
    _jsonl(root / "winogrande" / wino, [{"qID": str(i), "sentence": s() + " _ " + s(), "option1": "a", "option2": "b",
                                         "answer": str(1 + i % 2)} for i in range(n)])
    for name in (("train",) if split == "train" else ("dev", "test")):
        _tsv(root / "scitail" / f"scitail_1.0_{name}.tsv", None,
             [(s(), s(), ("entails", "neutral")[i % 2]) for i in range(n)])
    yelp = root / "yelp_polarity" / ("train.csv" if split == "train" else "test.csv")
    yelp.parent.mkdir(parents=True, exist_ok=True)
    yelp.write_text("".join(f'"{1 + i % 2}","{s()}"\n' for i in range(n)), encoding="utf-8")


def _webnlg(root: Path, split: str, n: int, rng) -> None:
    root.mkdir(parents=True, exist_ok=True)
    entries = [{str(i + 1): {"category": "Airport", "size": "1", "xml_id": f"Id{i}",
                             "modifiedtripleset": [{"subject": rng.choice(WORDS), "property": "near",
                                                    "object": rng.choice(WORDS)}],
                             "lexicalisations": [{"comment": "good", "lex": sentence(rng), "lid": "Id1"}]}}
               for i in range(n)]
    for name in (("train",) if split == "train" else ("dev", "test")):
        (root / f"{name}.json").write_text(json.dumps({"entries": entries}), encoding="utf-8")


def _tsv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _glue(root: Path, split: str, n: int, rng) -> None:
    name = "train.tsv" if split == "train" else "dev.tsv"
    s = lambda: sentence(rng)  # noqa: E731
    _tsv(root / "CoLA" / name, None, [("gj04", i % 2, "", s()) for i in range(n)])
    _tsv(root / "SST-2" / name, ("sentence", "label"), [(s(), i % 2) for i in range(n)])
    _tsv(root / "MRPC" / name, ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
         [(i % 2, i, i + 1, s(), s()) for i in range(n)])
    _tsv(root / "QQP" / name, ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
         [(i, i, i, s(), s(), i % 2) for i in range(n)])
    _tsv(root / "STS-B" / name, ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                                 "sentence1", "sentence2", "score"),
         [(i, "g", "f", "y", i, "n", "n", s(), s(), f"{rng.uniform(0, 5):.3f}") for i in range(n)])
    for mnli, rows in ((("train.tsv", n),) if split == "train" else (("dev_matched.tsv", n), ("dev_mismatched.tsv", n + 3))):
        _tsv(root / "MNLI" / mnli, ("index", "genre", "sentence1", "sentence2", "gold_label"),
             [(i, "g", s(), s(), ("entailment", "neutral", "contradiction")[i % 3]) for i in range(rows)])
    _tsv(root / "QNLI" / name, ("index", "question", "sentence", "label"),
         [(i, s(), s(), ("entailment", "not_entailment")[i % 2]) for i in range(n)])
    _tsv(root / "RTE" / name, ("index", "sentence1", "sentence2", "label"),
         [(i, s(), s(), ("entailment", "not_entailment")[i % 2]) for i in range(n)])
    _tsv(root / "WNLI" / name, ("index", "sentence1", "sentence2", "label"), [(i, s(), s(), i % 2) for i in range(n)])


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _superglue(root: Path, split: str, n: int, rng) -> None:
    name = "train.jsonl" if split == "train" else "val.jsonl"
    s = lambda k=6: sentence(rng, k)  # noqa: E731
    _jsonl(root / "BoolQ" / name, [{"question": s(), "passage": s(12), "label": bool(i % 2), "idx": i}
                                   for i in range(n)])
    _jsonl(root / "CB" / name, [{"premise": s(), "hypothesis": s(), "idx": i,
                                 "label": ("entailment", "contradiction", "neutral")[i % 3]} for i in range(n)])
    _jsonl(root / "COPA" / name, [{"premise": s(), "choice1": s(), "choice2": s(), "question": "effect",
                                   "label": i % 2, "idx": i} for i in range(n)])
    _jsonl(root / "MultiRC" / name, [{"idx": i, "passage": {"text": s(12), "questions": [
        {"question": s(), "idx": 0, "answers": [{"text": s(3), "idx": j, "label": (i + j) % 2} for j in range(2)]}]}}
        for i in range(n)])
    _jsonl(root / "ReCoRD" / name, [{"idx": i, "passage": {"text": "the dog sees the cat near the river",
                                                           "entities": [{"start": 4, "end": 6}, {"start": 16, "end": 18}]},
                                     "qas": [{"idx": f"{i}-0", "query": "the @placeholder runs",
                                              "answers": [{"start": 4, "end": 6, "text": "dog"}]}]} for i in range(n)])
    _jsonl(root / "WiC" / name, [{"word": "film", "sentence1": s(), "sentence2": s(), "label": bool(i % 2),
                                  "idx": i} for i in range(n)])
    _jsonl(root / "WSC" / name, [{"text": "the man sees the dog and he likes it", "idx": i, "label": bool(i % 2),
                                  "target": {"span1_index": 1, "span1_text": "man", "span2_index": 6,
                                             "span2_text": "he"}} for i in range(n)])
    _jsonl(root / "RTE" / name, [{"premise": s(), "hypothesis": s(), "idx": i,
                                  "label": ("entailment", "not_entailment")[i % 2]} for i in range(n)])


def _e2e(root: Path, split: str, n: int, rng) -> None:
    root.mkdir(parents=True, exist_ok=True)
    name = "trainset.csv" if split == "train" else "devset.csv"
    with open(root / name, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mr", "ref"])
        for i in range(n):
            writer.writerow([f"name[{rng.choice(WORDS)}], food[cheap]", sentence(rng)])


def tokenizer_for(kind: str) -> tf.PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + SCORES + [str(i) for i in range(10)] + sorted(set(WORDS))
                                            + ["sentence:", "answer:", "name[", "food[cheap]"])}
    for filler in range(len(vocab), 256):    # room for 100-token prompts initialized from the vocabulary
        vocab[f"<extra_{filler}>"] = filler
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "classification":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 4), ("[SEP]", 5)])
    elif kind == "seq2seq":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                      unk_token="<unk>", cls_token="[CLS]", sep_token="[SEP]")


WIDTH_KEYS = {"t5": ("d_model",), "bart": ("d_model",), "bert": ("hidden_size",), "roberta": ("hidden_size",),
              "gpt2": ("n_embd",), "llama": ("hidden_size",)}


def tiny_model_dir(arch: str, root: Path, width: int = 16) -> Path:
    """A tiny random `arch` model (no dropout) and its tokenizer, saved like a hub checkpoint. `width`
    sets the hidden size (4 heads; feed-forward 2x), e.g. 96 so that paper-sized reduction factors fit."""
    out = Path(root) / f"tiny-{arch}-{width}"
    if (out / "config.json").exists():
        return out
    kind = {"t5": "seq2seq", "bart": "seq2seq", "gpt2": "causal", "llama": "causal"}.get(arch, "classification")
    tokenizer = tokenizer_for(kind)
    config = tiny_config(arch)
    config.vocab_size = len(tokenizer)
    for key in list(config.to_dict()):
        if "dropout" in key or "pdrop" in key:
            setattr(config, key, 0.0)
    if width != 16:
        for key in WIDTH_KEYS[arch]:
            setattr(config, key, width)
        for key in ("d_ff", "encoder_ffn_dim", "decoder_ffn_dim", "intermediate_size"):
            if hasattr(config, key):
                setattr(config, key, 2 * width)
        if arch == "t5":
            config.d_kv = width // 4
    config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 1, 2
    if kind == "seq2seq":
        config.decoder_start_token_id = 0
    import torch
    torch.manual_seed(0)
    head = {"seq2seq": tf.AutoModelForSeq2SeqLM, "causal": tf.AutoModelForCausalLM}.get(kind, tf.AutoModel)
    head.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_run_config(tmp: Path, arch: str = "bert", task: str = "sst2", **sections) -> dict:
    """A run config mapping for a tiny model on the tiny task files."""
    data_dir = tmp / "data"
    if not data_dir.exists():
        write_task_files(data_dir)
    config = {"tasks": [task], "method": {"method": "houlsby", "reduction_factor": 4},
              "output_dir": str(tmp / "run"), "model": {"name": str(tiny_model_dir(arch, tmp / "models")),
                                                        "max_length": 24, "max_target_length": 4},
              "data": {"dir": str(data_dir), "splits": "official"},
              "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "learning_rate": 1e-2,
                        "eval_strategy": "steps", "eval_steps": 2, "log_steps": 1, "tensorboard": False,
                        "progress_bar": False, "seed": 3}}
    for key, value in sections.items():
        if key in ("model", "data", "train") and isinstance(value, dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def test_transformers_adamw_adds_eps_before_the_correction_and_decays_after_the_update():
    """transformers 4.x AdamW (the seeds' trainers), computed here by hand for two steps."""
    import math as m
    import torch
    from peftlab.train.optim import TransformersAdamW
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = TransformersAdamW([p], lr=0.1, betas=(0.9, 0.99), eps=0.5, weight_decay=0.2)
    grads = [torch.tensor([0.3, -0.1]), torch.tensor([-0.2, 0.4])]
    w, m1, m2 = torch.tensor([1.0, -2.0]), torch.zeros(2), torch.zeros(2)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m1, m2 = 0.9 * m1 + 0.1 * g, 0.99 * m2 + 0.01 * g * g
        w = w - 0.1 * m.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t) * m1 / (m2.sqrt() + 0.5)
        w = w - 0.1 * 0.2 * w
    torch.testing.assert_close(p.detach(), w)
    q = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    torch_opt = torch.optim.AdamW([q], lr=0.1, betas=(0.9, 0.99), eps=0.5, weight_decay=0.2)
    for g in grads:
        q.grad = g.clone()
        torch_opt.step()
    assert not torch.allclose(p.detach(), q.detach())       # a different algorithm, not a renaming


def test_the_schedule_can_step_first_and_warm_up_over_a_fraction():
    import torch
    from peftlab.train.optim import build_schedule
    from peftlab.train.schema import TrainSection

    def rates(**train):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        schedule = build_schedule(opt, TrainSection(learning_rate=1.0, **train), 10)
        out = []
        for _ in range(4):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        return out
    assert rates(warmup_ratio=0.25) == [0.0, 0.5, 1.0, 0.875]                      # int(2.5) = 2 warmup steps
    assert rates(warmup_ratio=0.25, fractional_warmup=True) == pytest.approx([0.0, 0.4, 0.8, 7 / 7.5])   # over 2.5
    assert rates(warmup_ratio=0.25, scheduler_step_first=True) == [0.5, 1.0, 0.875, 0.75]   # one ahead
