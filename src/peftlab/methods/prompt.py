"""Prompt tuning (Lester et al.): m trainable virtual-token embeddings prepended to the (encoder) input.

Initializations: `random` U(-0.5, 0.5); `vocab` rows of the model's embedding matrix, ids 0..m-1
(`vocab_ids="first"`, Compacter) or m ids drawn from range(`vocab_range`) with `seed` (`"sample"`,
ATTEMPT); `text` the embeddings of `init_text` (tokenized by the tokenizer at `tokenizer`, a local
path or hub id) or of `init_token_ids`, repeated to length m. The prompt is saved as `home.prompt.embedding`,
which SPoT and ATTEMPT read back as source prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer

from ..config import MethodConfig, check
from ..errors import PeftlabError
from ..files import CONFIG_FILE, WEIGHTS_FILE, read_json, read_safetensors, read_torch_tensors
from ..models import offline_path
from ..prompting import PromptProvider, install_prompt
from ..registry import register_method

PROMPT_KEY = "home.prompt.embedding"
ATTEMPT_TARGET_KEY = "home.prompt.targets"


@dataclass
class PromptTuning(MethodConfig):
    length: int = 100
    init: Literal["random", "vocab", "text"] = "random"
    vocab_ids: Literal["first", "sample"] = "first"
    vocab_range: int = 5000
    seed: int = 0
    init_text: str | None = None
    init_token_ids: tuple[int, ...] | None = None
    tokenizer: str | None = None
    compat_choices = ("compacter", "attempt")

    def validate(self):
        check(self.length >= 1, f"PromptTuning.length must be >= 1, got {self.length}")
        check(self.vocab_range >= 1, f"PromptTuning.vocab_range must be >= 1, got {self.vocab_range}")
        check(self.seed >= 0, f"PromptTuning.seed must be >= 0, got {self.seed}")
        bad = [i for i in self.init_token_ids or () if i < 0]
        check(not bad, f"PromptTuning.init_token_ids: token id {bad[0] if bad else ''} is negative")
        if self.init == "text":
            check(bool(self.init_token_ids) or (bool(self.init_text) and bool(self.tokenizer)),
                  "PromptTuning init='text' needs init_token_ids, or init_text with a tokenizer path")


class PromptEmbedding(PromptProvider):
    """One prompt for every example: (1, m, d)."""

    def __init__(self, initial: torch.Tensor):
        super().__init__()
        self.length = initial.shape[0]
        self.embedding = nn.Parameter(initial.detach().clone().float())

    def forward(self, embeds, mask, task_ids):
        return self.embedding.unsqueeze(0)


def embedding_matrix(target) -> torch.Tensor:
    return target.model.get_input_embeddings().weight


def vocab_init(target, length: int, vocab_ids: str, vocab_range: int, seed: int) -> torch.Tensor:
    table = embedding_matrix(target)
    size = table.shape[0]
    if vocab_ids == "first":
        check(length <= size, f"prompt length {length} is larger than the vocabulary ({size} tokens) "
                              "for init='vocab'")
        ids = torch.arange(length)
    else:
        pool = min(vocab_range, size)
        check(length <= pool, f"prompt length {length} is larger than the {pool} token ids to sample from")
        ids = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:length]
    return table.detach()[ids.to(table.device)].clone()


def text_ids(init_text, init_token_ids, tokenizer) -> list[int]:
    if init_token_ids:
        return list(init_token_ids)
    source = offline_path(tokenizer) or tokenizer          # "minilm" and other offline names work too
    try:
        ids = AutoTokenizer.from_pretrained(str(source))(init_text, add_special_tokens=False)["input_ids"]
    except OSError as err:
        raise PeftlabError(f"cannot load tokenizer '{tokenizer}' for init_text ({err})") from None
    if not ids:
        raise PeftlabError(f"init_text {init_text!r} tokenizes to no tokens")
    return ids


def code_vocab_init(target, length: int, seed: int) -> torch.Tensor:
    """What the Compacter and ATTEMPT code's "vocabulary" init really gives (docs/fidelity.md C9): it copies
    rows of the embedding table inside `_init_weights`, which runs before the checkpoint loads, when the
    table is a fresh N(0, 1) draw (Compacter modeling_t5.py:766-772,1602-1607; ATTEMPT modeling_t5.py:
    821-824,1759-1764). So: N(0, 1) entries."""
    return torch.randn(length, target.hidden_size, generator=torch.Generator().manual_seed(seed))


def initial_prompt(target, *, length, init, vocab_ids, vocab_range, seed, init_text, init_token_ids,
                   tokenizer, compat=None) -> torch.Tensor:
    if init == "vocab" and compat in ("compacter", "attempt"):
        return code_vocab_init(target, length, seed)
    if init == "vocab":
        return vocab_init(target, length, vocab_ids, vocab_range, seed)
    if init == "text":
        ids = text_ids(init_text, init_token_ids, tokenizer)
        table = embedding_matrix(target)
        bad = [i for i in ids if not 0 <= i < table.shape[0]]
        check(not bad, f"init token id {bad[0] if bad else ''} is outside the vocabulary ({table.shape[0]})")
        repeated = (ids * (length // len(ids) + 1))[:length]
        return table.detach()[torch.tensor(repeated, device=table.device)].clone()
    g = torch.Generator().manual_seed(seed)
    return torch.rand(length, target.hidden_size, generator=g) - 0.5


def attach_prompt(target, initial: torch.Tensor, provider: PromptProvider | None = None) -> PromptProvider:
    """Put a prompt provider (default: a trainable PromptEmbedding of `initial`) at home.prompt and hook it."""
    check(initial.shape[-1] == target.hidden_size,
          f"prompt width {initial.shape[-1]} differs from the model's hidden size {target.hidden_size}")
    provider = provider or PromptEmbedding(initial)
    home = target.home()
    home.prompt = provider.to(embedding_matrix(target).device)
    install_prompt(target, provider)
    return provider


def read_saved_prompt(source, task: int = 0) -> torch.Tensor:
    """The (m, d) prompt in `source`: a directory saved by `pl.save` for prompt tuning, SPoT or ATTEMPT
    (ATTEMPT: the target of `task`), or a tensor file — ATTEMPT's released source prompts are a (m, d)
    tensor saved with `torch.save` (`.pt`), read with weights_only; a `.safetensors` file with one tensor."""
    source = Path(source)
    if source.is_dir():
        return _prompt_in_directory(source, task)
    loaded = read_safetensors(source) if source.suffix == ".safetensors" else read_torch_tensors(source)
    if isinstance(loaded, dict):
        tensors = [v for v in loaded.values() if torch.is_tensor(v)]
        loaded = tensors[0] if len(tensors) == 1 and len(loaded) == 1 else None
    if not torch.is_tensor(loaded) or loaded.dim() != 2:
        shape = f"a tensor of shape {list(loaded.shape)}" if torch.is_tensor(loaded) else type(loaded).__name__
        raise PeftlabError(f"{source}: a prompt file holds one (tokens, width) tensor; this one holds {shape}")
    return loaded.detach().float()


def _prompt_in_directory(directory: Path, task: int) -> torch.Tensor:
    meta = read_json(directory / CONFIG_FILE)
    method = meta.get("config", {}).get("method")
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    if method in ("prompt_tuning", "spot") and PROMPT_KEY in tensors:
        return tensors[PROMPT_KEY]
    if method == "attempt" and ATTEMPT_TARGET_KEY in tensors:
        targets = tensors[ATTEMPT_TARGET_KEY]
        check(0 <= task < targets.shape[0], f"{directory}: task {task} out of range (0..{targets.shape[0] - 1})")
        return targets[task]
    raise PeftlabError(f"{directory}: not a saved prompt (method {method!r}); save a PromptTuning, SPoT "
                       "or Attempt adapter with pl.save")


def save_random_prompts(model, directory, count: int = 2, length: int = 4) -> tuple[str, ...]:
    """`count` random prompt files (safetensors) of the model's width: source prompts for examples."""
    width = model.get_input_embeddings().weight.shape[-1]
    paths = []
    for seed in range(count):
        path = Path(directory) / f"source_prompt_{width}_{length}_{seed}.safetensors"
        if not path.exists():
            prompt = torch.rand(length, width, generator=torch.Generator().manual_seed(seed)) - 0.5
            save_file({"prompt": prompt}, str(path))
        paths.append(str(path))
    return tuple(paths)


def build_prompt(target, **kwargs):
    attach_prompt(target, initial_prompt(target, **kwargs))


def _example(model, tmp_dir):
    return PromptTuning(length=4)


register_method("prompt_tuning", PromptTuning, build_prompt, aliases=("prompt-tuning", "prompt"), example=_example)
