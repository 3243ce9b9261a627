"""Loading base models from a GGUF file (the offline SmolLM2's format, DESIGN §5): one parse of the file
per run, and the same model, config and tokenizer as transformers' own repeated parses give."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import peftlab.models
from peftlab.models import gguf_parsed_once, load_pretrained
from peftlab.train.loop import Trainer
from peftlab.train.schema import RunConfig
from test_train_support import tiny_run_config

gguf = pytest.importorskip("gguf")
gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")

TINY = "tiny-gguf"     # an offline name that the tests point at a tiny GGUF file


def byte_symbols() -> list[str]:
    """The 256 printable characters a byte-level BPE vocabulary spells bytes with (GPT-2's scheme)."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    moved = [256 + i for i, _ in enumerate(b for b in range(256) if b not in kept)]
    return [chr(c) for c in kept + moved]


def write_tiny_gguf(path: Path, hidden: int = 16, layers: int = 2, heads: int = 2, kv_heads: int = 1,
                    ffn: int = 32) -> Path:
    """A Llama with float32 random weights and a byte-level BPE tokenizer, as llama.cpp lays it out."""
    rng = np.random.default_rng(0)
    tokens = ["<|endoftext|>", "<|pad|>", *byte_symbols(), "Ġt"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_pad_token_id(1)
    kv = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
                       f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (kv, hidden),
                       f"blk.{i}.attn_v.weight": (kv, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                       f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch) -> Path:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    offline_path = peftlab.models.offline_path
    monkeypatch.setattr(peftlab.models, "offline_path", lambda name: path if name == TINY else offline_path(name))
    return path


@pytest.fixture
def parses(monkeypatch) -> dict:
    """Counts of what transformers parses a GGUF file with: the reader, and its conversion to a
    config / tokenizer dict (metadata) or to tensors too (weights)."""
    counts = {"reader": 0, "metadata": 0, "weights": 0}
    reader, convert = gguf.GGUFReader, gguf_utils.load_gguf_checkpoint

    def counted_reader(*args, **kwargs):
        counts["reader"] += 1
        return reader(*args, **kwargs)

    def counted_convert(path, return_tensors=False, *args, **kwargs):
        counts["weights" if return_tensors else "metadata"] += 1
        return convert(path, return_tensors, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counted_reader)
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", counted_convert)
    return counts


def test_a_run_on_a_gguf_model_parses_the_file_once(tiny_gguf, parses, tmp_path):
    config = tiny_run_config(tmp_path, model={"name": TINY}, train={"max_steps": 1, "eval_strategy": "no"})
    results = Trainer(RunConfig.from_dict(config)).run()
    assert results["model"] == TINY and results["train"]["steps"] == 1
    # before: 5 parses (the runner's config, load_pretrained's config, the model's config, the
    # weights, the tokenizer's config); now one, converted once for metadata and once with the weights
    # (transformers before 5.21 builds the config straight from the reader: no metadata conversion then)
    assert parses["reader"] == 1 and parses["weights"] == 1 and parses["metadata"] <= 1


def loaded(name: str) -> tuple[dict, str, dict, list]:
    model, tokenizer = load_pretrained(name)
    return (model.state_dict(), model.config.to_json_string(), tokenizer.get_vocab(),
            tokenizer("the tiny cat")["input_ids"])


def test_sharing_the_parse_loads_the_same_model_and_tokenizer(tiny_gguf, monkeypatch):
    shared = loaded(TINY)
    with monkeypatch.context() as patch:     # transformers' own parses, one per object built
        patch.setattr(peftlab.models, "_gguf_sharing_patches", lambda: [])
        separate = loaded(TINY)
    assert shared[0].keys() == separate[0].keys()
    assert all(torch.equal(shared[0][key], separate[0][key]) for key in shared[0])
    assert json.loads(shared[1]) == json.loads(separate[1])
    assert shared[2:] == separate[2:]


def test_the_shared_parse_ends_with_the_outermost_block(tiny_gguf, parses):
    reader, convert = gguf.GGUFReader, gguf_utils.load_gguf_checkpoint
    with gguf_parsed_once():
        with gguf_parsed_once():
            load_pretrained(TINY)
        assert gguf.GGUFReader is not reader
        load_pretrained(TINY)
    assert gguf.GGUFReader is reader and gguf_utils.load_gguf_checkpoint is convert
    assert parses["reader"] == 1
    shutil.rmtree(peftlab.models.dequantized_dir(tiny_gguf))   # without the cache ...
    load_pretrained(TINY)                    # ... a new block parses again: nothing outlives a run
    assert parses["reader"] == 2


def test_a_gguf_model_is_dequantized_once_into_the_cache_then_loads_from_it(tiny_gguf, parses, tmp_path):
    first, tokenizer = load_pretrained(TINY)
    cached = peftlab.models.dequantized_dir(tiny_gguf)
    assert (cached / "config.json").is_file() and parses["weights"] == 1
    assert not [p for p in cached.parent.iterdir() if ".tmp-" in p.name]
    again, tokenizer_again = load_pretrained(TINY)
    assert parses["weights"] == 1 and parses["reader"] == 1        # the second load parsed nothing
    assert all(torch.equal(first.state_dict()[k], v) for k, v in again.state_dict().items())
    assert tokenizer("the tiny cat")["input_ids"] == tokenizer_again("the tiny cat")["input_ids"]
    for model in (first, again):             # a plain float model: it saves and loads like any other
        assert getattr(model, "hf_quantizer", None) is None
        model.save_pretrained(tmp_path / "saved")
        reloaded = type(model).from_pretrained(tmp_path / "saved")
        assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_failed_cache_write_leaves_no_partial_folder_and_still_loads(tiny_gguf, monkeypatch):
    import transformers as tf

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.PreTrainedModel, "save_pretrained", full_disk)
    with pytest.warns(UserWarning, match="could not cache the dequantized"):
        model, _ = load_pretrained(TINY)
    assert getattr(model, "hf_quantizer", None) is None
    cache = peftlab.models.dequantized_dir(tiny_gguf)
    assert not cache.exists() and not list(cache.parent.glob("*.tmp-*"))
