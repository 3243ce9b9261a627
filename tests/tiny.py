"""Tiny random models of every supported architecture, built from configs (nothing downloaded)."""
from __future__ import annotations

import torch
import transformers as tf

ARCHS = ("t5", "bart", "bert", "roberta", "gpt2", "llama")
ENCODER_DECODER = ("t5", "bart")
DECODERS = ("gpt2", "llama", "qwen2")
VOCAB = 96


def tiny_config(arch: str):
    if arch == "t5":
        return tf.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                           num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if arch == "bart":
        return tf.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=32,
                             decoder_ffn_dim=32, encoder_attention_heads=4, decoder_attention_heads=4,
                             max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             decoder_start_token_id=2, forced_eos_token_id=None)
    if arch in ("bert", "roberta"):
        cls = tf.BertConfig if arch == "bert" else tf.RobertaConfig
        return cls(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=32, max_position_embeddings=64, pad_token_id=1, num_labels=3)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, n_positions=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "llama":
        return tf.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "qwen2":   # grouped key/value heads and biased q/k/v projections
        return tf.Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                              bos_token_id=0, eos_token_id=0, pad_token_id=0)
    raise KeyError(arch)


def tiny_model(arch: str, seed: int = 0):
    """A tiny model in eval mode; encoders get a 3-way classification head, the rest an LM head."""
    torch.manual_seed(seed)
    config = tiny_config(arch)
    if arch in ENCODER_DECODER:
        model = tf.AutoModelForSeq2SeqLM.from_config(config)
    elif arch in DECODERS:
        model = tf.AutoModelForCausalLM.from_config(config)
    else:
        model = tf.AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def tiny_batch(arch: str, batch: int = 2, length: int = 7, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0    # one padded row, so masking paths run too
    out = {"input_ids": ids, "attention_mask": mask}
    if arch in ENCODER_DECODER:
        out["labels"] = torch.randint(3, VOCAB, (batch, 4), generator=g)
    elif arch in DECODERS:
        out["labels"] = ids.masked_fill(mask == 0, -100)
    else:
        out["labels"] = torch.randint(0, 3, (batch,), generator=g)
    return out


def no_dropout(model) -> None:
    """Every dropout at 0 (modules, and the rates attention functions read from their module), so that train
    mode computes what eval mode does: a gradient check is then about the math, not the dropout masks."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
                setattr(module, key, 0.0)
