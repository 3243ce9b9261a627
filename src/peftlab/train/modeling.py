"""Build the base model and tokenizer a run config names, and attach its method (one adapter, or one
per task). Used by `train`, `eval` and `predict` alike so that all three rebuild the same model."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers as tf

import peftlab as pl

from ..core import adapter_state
from ..errors import PeftlabError
from ..files import WEIGHTS_FILE, read_safetensors
from ..io import copy_into
from ..models import build_from_config, gguf_parsed_once, load_config, load_pretrained, model_source
from ..tasks import Task
from .schema import RunConfig

DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neo", "gptj", "opt")
# the names transformers' configs give their hidden and attention dropout (GPT-2, BERT/RoBERTa, T5, BART)
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "dropout_rate", "dropout", "attention_dropout")
TASK_ID_FIELDS = ("task_names", "tasks", "num_tasks")   # a method that routes by task id has one of these


ENCODERS = ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta")


def model_kind(config: RunConfig, hf_config) -> str:
    if config.model.head != "auto":
        encoder = hf_config.model_type in ENCODERS
        if (config.model.head == "seq2seq" and not getattr(hf_config, "is_encoder_decoder", False)) or \
                (config.model.head == "causal" and encoder):
            raise PeftlabError(f"model.head {config.model.head}: '{config.model.name}' is a {hf_config.model_type} "
                               f"{'encoder' if encoder else 'model'} without that kind of head; use head auto")
        return config.model.head
    if getattr(hf_config, "is_encoder_decoder", False):
        return "seq2seq"
    if hf_config.model_type in DECODER_TYPES:
        return "causal"
    return "classification"


def hf_config_of(name: str):
    source, gguf = model_source(name)
    try:
        return tf.AutoConfig.from_pretrained(source, **gguf)
    except (OSError, ValueError) as err:
        raise PeftlabError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from None


def build_model(config: RunConfig, tasks: list[Task]):
    """(model, tokenizer, kind) with the method attached; the head is sized for the (first) task."""
    with gguf_parsed_once():    # a GGUF model's file is parsed here, and the parse reused to load it
        model, tokenizer, kind = _load_base(config, tasks)
    if config.model.tokenizer:
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(config.model.tokenizer)
        except (OSError, ValueError) as err:
            raise PeftlabError(f"cannot load tokenizer '{config.model.tokenizer}': "
                               f"{str(err).splitlines()[0]}") from None
    for task in tasks:             # a seed's own token layout (kernel-adapters' WebNLG tokens)
        if task.special_tokens():
            tokenizer.add_special_tokens(task.special_tokens())
    _fix_special_tokens(model, tokenizer, kind)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:       # ids past the table would fail in the middle of training
        raise PeftlabError(f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding {rows:,} rows; "
                           f"use the model's own tokenizer or set model.resize_vocab")
    attach_method(model, config, tasks)
    _train_new_rows(model, config)
    return model, tokenizer, kind


def _train_new_rows(model, config: RunConfig) -> None:
    """kernel-adapters' unfreeze_task_embeddings (nlg/utils.py:307-309, train.py:438-444): the embedding
    (tied to the output layer) trains, with the gradient of the checkpoint's own rows zeroed, so only the
    rows the resize added move — zeroed after the gradient clipping, which counts them (train.py:434 comes
    first: `zero_old_rows`). Counted, as the code prints it, as the whole tensor."""
    if not config.model.train_new_embeddings:
        return
    weight = model.get_input_embeddings().weight
    old_rows = model.__dict__.get("_peftlab_vocab_before_resize", weight.shape[0])
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[old_rows:] = 1
    weight.requires_grad_(True)
    model.__dict__[NEW_ROWS] = (weight, keep)


NEW_ROWS = "_peftlab_new_embedding_rows"


@torch.no_grad()
def zero_old_rows(model) -> None:
    """With model.train_new_embeddings: zero the gradient of the embedding's pre-existing rows (after the
    clipping, as kernel-adapters' train.py:434, 438-444 orders it)."""
    held = model.__dict__.get(NEW_ROWS)
    if held is not None and held[0].grad is not None:
        weight, keep = held
        weight.grad.mul_(keep.to(weight.grad.dtype))


def _resize(model, config: RunConfig) -> None:
    """The vocabulary resized as the seeds do (compacter run_seq2seq.py:343: T5's 32,128 rows to
    len(tokenizer) = 32,100; kernel-adapters: GPT-2 plus 16 tokens); new rows N(0, initializer_range²) as
    their transformers 4.x drew them (no mean resizing)."""
    if config.model.resize_vocab is not None:
        model.__dict__["_peftlab_vocab_before_resize"] = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(config.model.resize_vocab, mean_resizing=False)


HEADS = {"classification": tf.AutoModelForSequenceClassification, "seq2seq": tf.AutoModelForSeq2SeqLM,
         "causal": tf.AutoModelForCausalLM}


def count_run(config: RunConfig) -> tuple[int, int]:
    """(trainable, total) parameters of the run's model with its method attached, built from the model's
    config on the meta device: no weights are read or allocated (docs/seed_configs.md counts)."""
    tasks = config.task_list()
    hf_config = load_config(config.model.name)      # a preset's config where there is one: no download
    kind = model_kind(config, hf_config)
    if kind == "classification":
        hf_config.num_labels = tasks[0].num_labels
    model = build_from_config(hf_config, HEADS[kind], meta=True)
    _resize(model, config)
    attach_method(model, config, tasks)
    _train_new_rows(model, config)
    return pl.trainable_parameters(model)


def _load_base(config: RunConfig, tasks: list[Task]):
    """(model, tokenizer, kind): the pretrained model with the head the run's kind needs."""
    hf_config = hf_config_of(config.model.name)
    kind = model_kind(config, hf_config)
    heads = HEADS
    kwargs = {}
    if kind == "classification":
        if len(tasks) > 1:     # one classification head cannot serve several label sets
            raise PeftlabError(f"tasks {[t.name for t in tasks]}: a multi-task run needs a text-to-text model "
                               f"(T5, BART, GPT-2, Llama); with '{config.model.name}' run one task at a time")
        kwargs["num_labels"] = tasks[0].num_labels
        kwargs["problem_type"] = ("regression" if tasks[0].kind == "regression"
                                  else "single_label_classification")
    if config.model.dropout is not None:
        kwargs.update({key: config.model.dropout for key in DROPOUT_KEYS if hasattr(hf_config, key)})
    with _quiet_transformers():
        model, tokenizer = load_pretrained(config.model.name, head=heads[kind], **kwargs)
    _resize(model, config)
    return model, tokenizer, kind


def attach_method(model, config: RunConfig, tasks: list[Task]) -> list[str]:
    """Attach the run's method; returns the adapter names (one per task for `adapters: per_task`)."""
    method = config.method_config()
    names = [t.name for t in tasks] if config.adapters == "per_task" else ["default"]
    for name in names:
        pl.attach(model, method, name=_adapter_name(name))
    if config.init_from:
        tensors = read_safetensors(Path(config.init_from) / WEIGHTS_FILE)
        for name in names:
            copy_into(adapter_state(model, _adapter_name(name)), tensors, Path(config.init_from))
    if len(names) == 1:
        pl.activate(model, _adapter_name(names[0]))
    else:   # each batch activates its task's adapter; all of them train over the run
        pl.train_adapter(model, *map(_adapter_name, names), activate=False)
    return [_adapter_name(n) for n in names]


def _adapter_name(task_name: str) -> str:
    return task_name.replace("-", "_")


def uses_task_ids(model) -> bool:
    """Whether the attached method routes by task id (ATTEMPT's multi-task prompts)."""
    return any(getattr(config, name, None) for config in pl.adapters(model).values() for name in TASK_ID_FIELDS)


def _fix_special_tokens(model, tokenizer, kind: str) -> None:
    """Decoders often lack a pad token (GPT-2, Llama): pad with the end token; T5 built from a config
    needs decoder_start_token_id (DESIGN §6)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if kind == "seq2seq" and getattr(model.config, "decoder_start_token_id", None) is None:
        model.config.decoder_start_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


class _quiet_transformers:
    """'Some weights were newly initialized' is expected for a fresh task head: keep the console clean."""

    def __enter__(self):
        self.level = tf.logging.get_verbosity()
        self.bars = tf.logging.is_progress_bar_enabled()
        tf.logging.set_verbosity_error()
        tf.logging.disable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.ERROR)

    def __exit__(self, *exc):
        tf.logging.set_verbosity(self.level)
        if self.bars:
            tf.logging.enable_progress_bar()
        return False


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Every trainable tensor by parameter name (adapter, head, claimed base tensors)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
