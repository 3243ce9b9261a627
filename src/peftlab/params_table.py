"""Trainable-parameter tables from configs alone: models are built on the meta device (no memory)."""
from __future__ import annotations

from pathlib import Path

import transformers as tf
import yaml

from .config import MethodConfig
from .core import trainable_parameters
from .errors import PeftlabError
from .io import attach
from .models import PRESETS, build_from_config, load_config
from .registry import config_from_dict, get_method

HEADS = {"seq2seq": tf.AutoModelForSeq2SeqLM, "causal": tf.AutoModelForCausalLM,
         "classification": tf.AutoModelForSequenceClassification, "auto": None}


def paper_rows(model_name: str) -> list[dict]:
    tables = yaml.safe_load((PRESETS / "tables.yaml").read_text()) or {}
    return tables.get(model_name, [])


def read_config_file(path: str) -> MethodConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PeftlabError(f"{path}: cannot read method config ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise PeftlabError(f"{path}: expected a mapping with a 'method' key")
    return config_from_dict(data.get("method_config", data) if isinstance(data.get("method_config"), dict) else data)


def count(model_name: str, config: MethodConfig, head: str = "auto") -> tuple[int, int]:
    """(trainable parameters of `config` on the model, base parameters)."""
    model = build_from_config(load_config(model_name), HEADS[head], meta=True)
    base = trainable_parameters(model)[1]
    attach(model, config, name="probe")
    trainable = trainable_parameters(model)[0]
    return trainable, base


def rows_for(model_name, methods, config_files) -> list[tuple[str, MethodConfig, dict]]:
    rows = [(m, get_method(m).config_cls(), {}) for m in methods or []]
    rows += [(Path(f).stem, read_config_file(f), {}) for f in config_files or []]
    if not rows:
        rows = [(r["label"], config_from_dict(r["config"]), r) for r in paper_rows(model_name)]
    if not rows:
        raise PeftlabError(f"no paper table for '{model_name}': pass --method NAME or --config FILE")
    return rows


def print_table(model_name: str, methods=None, config_files=None, head: str = "auto") -> list[tuple]:
    table = []
    base = None
    for label, config, paper in rows_for(model_name, methods, config_files):
        trainable, base = count(model_name, config, head)
        ref = ""
        if "paper_count" in paper:
            ref = f"{paper['paper_count']:,} ({paper['paper_percent']:.3f} %)"
        table.append((label, config.method, f"{trainable:,}", f"{100 * trainable / base:.3f}", ref))
    header = ("method", "name", "trainable", "% of base", "paper")
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    print(f"{model_name}: {base:,} base parameters")
    for row in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return table
