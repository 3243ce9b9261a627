"""ATTEMPT (Asai et al.): an attentional mixture of frozen source prompts and a trainable target prompt.

For an input x: x̂ = max-pool over the real tokens of the input embeddings; h = LayerNorm(W_up SiLU(W_down x̂))
(W_down d -> `attn_hidden`, W_up back to d, no biases, both N(0, 0.01²) at the start as in ATTEMPT's code);
P̂_j = max-pool over prompt j's tokens;
a = softmax_j(P̂_j · h / T) over the t sources and the target, T = d·e by default; the prompt prepended is
P = P_target + Σ_j a_j P_j (the target included in the sum). Trainable: the target prompt(s), W_down and
W_up (230,400 on T5-base), plus the LayerNorm with `train_layer_norm` (+2d).

Sources come from saved prompt-tuning runs (`sources`: directories written by `pl.save`), re-read at
attach, so they are not saved again; without `sources`, `num_sources` frozen prompts are drawn from the
vocabulary (seeded), which is enough for counting parameters. Multi-task (`tasks`): one target prompt
per task, G shared; each batch carries `task_ids` (LongTensor, one per row) and every row uses its own
task's target. The mixing weights of every forward are recorded with `peftlab.observe` (series
"attempt/<adapter>/<task>"); `mixing_weights` computes them for a batch without running the model.
`model.generate(..., task_ids=ids)` works too (ids of the un-repeated rows; beams are handled).

`compat="attempt"` reproduces ATTEMPT's code (docs/fidelity.md A1, A6, A7): the input pool takes in the pad
token's embedding too (the code pools over padded inputs, every config padding to max_source_length),
the temperature defaults to 2000, and source prompts drawn without `sources` are N(0, 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import observe
from ..config import MethodConfig, check
from ..errors import PeftlabError
from ..files import read_torch_tensors
from ..calls import generating
from ..prompting import PromptProvider
from ..registry import register_method
from .prompt import attach_prompt, code_vocab_init, save_random_prompts, vocab_init
from .spot import load_sources


CODE_TEMPERATURE = 2000.0   # ATTEMPT options.py:265-270 (its configs pass 2087 ≈ 768·e)


@dataclass
class Attempt(MethodConfig):
    sources: tuple[str, ...] = ()
    num_sources: int | None = None
    length: int | None = None          # taken from the sources; 100 without them
    temperature: float | None = None   # default d * e
    target_init: int = 0               # which source the target prompt(s) start from
    tasks: tuple[str, ...] = ()        # multi-task mode: one target prompt per task name
    attn_hidden: int = 100
    train_layer_norm: bool = False
    save_prompt_only: bool = False     # save only the target prompt(s); G starts fresh on load
    seed: int = 0
    # start from a finished ATTEMPT run's files (its load_attention / layer_norm_dir / eval_seq2seq inputs):
    attn_init: tuple[str, ...] = ()    # (W_down .pt, W_up .pt): torch-saved (attn_hidden, d) and (d, attn_hidden)
    layer_norm_init: str | None = None  # a folder with layer_norm_weight.pt and layer_norm_bias.pt (kept frozen)
    target_files: tuple[str, ...] = ()  # the target prompt(s) (.pt, one per task in multi-task mode)
    compat_choices = ("attempt",)

    def validate(self):
        if self.sources:
            check(self.num_sources in (None, len(self.sources)),
                  f"Attempt.num_sources={self.num_sources} but {len(self.sources)} sources are given")
        else:
            check((self.num_sources or 0) >= 1, "Attempt needs sources (saved prompt dirs) or num_sources >= 1")
        count = len(self.sources) or self.num_sources
        check(0 <= self.target_init < count, f"Attempt.target_init={self.target_init} is not a source index "
                                             f"(0..{count - 1})")
        check(self.length is None or self.length >= 1, f"Attempt.length must be >= 1, got {self.length}")
        check(self.temperature is None or self.temperature > 0,
              f"Attempt.temperature must be > 0, got {self.temperature}")
        check(self.attn_hidden >= 1, f"Attempt.attn_hidden must be >= 1, got {self.attn_hidden}")
        check(len(set(self.tasks)) == len(self.tasks), f"Attempt.tasks has duplicates: {list(self.tasks)}")
        check(len(self.attn_init) in (0, 2), f"Attempt.attn_init names W_down and W_up files (2), got "
                                             f"{len(self.attn_init)}")
        check(len(self.target_files) in (0, 1, max(len(self.tasks), 1)),
              f"Attempt.target_files: give one file, or one per task ({len(self.tasks)}), got {len(self.target_files)}")


def masked_max_pool(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the real tokens (mask 1) of (batch, n, d) -> (batch, d)."""
    fill = torch.finfo(embeds.dtype).min
    return embeds.masked_fill(mask[..., None] == 0, fill).amax(dim=1)


class AttemptPrompt(PromptProvider):
    def __init__(self, sources: torch.Tensor, targets: torch.Tensor, temperature: float, attn_hidden: int,
                 train_layer_norm: bool, task_names: tuple[str, ...], source_names: list[str]):
        super().__init__()
        d = sources.shape[-1]
        self.length = sources.shape[1]
        self.register_buffer("sources", sources.float().clone(), persistent=False)   # re-read at attach
        self.targets = nn.Parameter(targets.float().clone())                        # (tasks, m, d)
        self.down = nn.Linear(d, attn_hidden, bias=False)
        self.up = nn.Linear(attn_hidden, d, bias=False)
        for linear in (self.down, self.up):   # ATTEMPT modeling_t5.py:867-871 (_init_weights on nn.Linear)
            nn.init.normal_(linear.weight, std=0.01)
        self.norm = nn.LayerNorm(d, elementwise_affine=train_layer_norm)   # frozen = its identity affine
        # a frozen affine read from `layer_norm_init` at attach (not saved: re-read, like the sources)
        self.register_buffer("norm_scale", None, persistent=False)
        self.register_buffer("norm_shift", None, persistent=False)
        self.temperature, self.task_names, self.labels = temperature, task_names, [*source_names, "target"]
        # compat="attempt": (the model's input embeddings, pad id): E[pad] joins the pool. A plain reference,
        # not a submodule (the model owns it); a deepcopy of the model copies it with the model.
        self.__dict__["pad_source"] = None

    def task_rows(self, task_ids, batch: int) -> torch.Tensor:
        """Index of each row's target prompt; raises when multi-task mode gets no (or bad) task ids."""
        if not self.task_names:
            return torch.zeros(batch, dtype=torch.long, device=self.targets.device)
        if task_ids is None:
            raise PeftlabError(f"Attempt in multi-task mode ({len(self.task_names)} tasks) needs task_ids "
                               "in the batch (a LongTensor with one task index per row)")
        ids = torch.as_tensor(task_ids, device=self.targets.device).long().reshape(-1)
        if generating() and ids.numel() and batch != ids.numel() and batch % ids.numel() == 0:
            ids = ids.repeat_interleave(batch // ids.numel())   # generate() repeats rows for beams/samples
        if ids.numel() != batch or ids.min() < 0 or ids.max() >= len(self.task_names):
            raise PeftlabError(f"Attempt task_ids {ids.tolist()} must give one index in 0..{len(self.task_names) - 1} "
                               f"per row of a batch of {batch}")
        return ids

    def mixing(self, embeds, mask, task_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-row target prompts (b, m, d), weights (b, t+1)) — pure; the last weight is the target's."""
        rows = self.task_rows(task_ids, embeds.shape[0])
        target = self.targets[rows]
        pooled = masked_max_pool(embeds.float(), mask)
        if self.pad_source is not None:   # ATTEMPT modeling_t5.py:1072 pools over the padding too
            embed, pad = self.pad_source
            pooled = torch.maximum(pooled, embed.weight[pad].float().to(pooled.device))
        h = self.norm(self.up(F.silu(self.down(pooled))))
        if self.norm_scale is not None:
            h = h * self.norm_scale + self.norm_shift
        pooled_sources = self.sources.amax(dim=1)                      # (t, d)
        scores = torch.cat([h @ pooled_sources.T, (target.amax(dim=1) * h).sum(-1, keepdim=True)], dim=-1)
        return target, torch.softmax(scores / self.temperature, dim=-1)

    def forward(self, embeds, mask, task_ids):
        target, weights = self.mixing(embeds, mask, task_ids)
        mixed = torch.einsum("bj,jmd->bmd", weights[:, :-1], self.sources) + weights[:, -1, None, None] * target
        self._record(weights, task_ids)
        return target + mixed

    def _record(self, weights, task_ids) -> None:
        if not observe.capturing():
            return
        rows = self.task_rows(task_ids, weights.shape[0])
        for index, task in enumerate(self.task_names or ("default",)):
            chosen = rows == index
            if chosen.any():
                observe.record(f"attempt/{self.adapter_name}/{task}", self.labels, weights[chosen])


def _drop_g_from_state(module, state, prefix, local_metadata):
    """`save_prompt_only`: the adapter's saved (and loaded) state is the target prompt(s) alone."""
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "targets")]:
        del state[key]


def mixing_weights(model: nn.Module, name: str, embeds: torch.Tensor, mask: torch.Tensor | None = None,
                   task_ids=None) -> torch.Tensor:
    """The (batch, t+1) ATTEMPT weights adapter `name` gives a batch of input embeddings (sources, target)."""
    provider = model.peftlab_adapters[name].prompt
    mask = torch.ones(embeds.shape[:2], device=embeds.device) if mask is None else mask
    with torch.no_grad():
        return provider.mixing(embeds, mask, task_ids)[1]


def _random_sources(target, count: int, length: int, seed: int, compat) -> torch.Tensor:
    if compat == "attempt":
        return torch.stack([code_vocab_init(target, length, seed + i) for i in range(count)]).float()
    return torch.stack([vocab_init(target, length, "sample", 5000, seed + i) for i in range(count)]).float()


def _pad_source(target):
    """(input embeddings, pad id): E[pad] is read at each forward, so it follows the model's weights."""
    pad = target.hf_config.pad_token_id
    check(pad is not None, "Attempt compat='attempt' pools the pad token's embedding, but the model "
                           "config has no pad_token_id")
    return target.model.get_input_embeddings(), pad


def _read_tensor(path, shape: tuple, what: str) -> torch.Tensor:
    loaded = read_torch_tensors(path)
    if isinstance(loaded, dict) and len(loaded) == 1:
        loaded = next(iter(loaded.values()))
    check(torch.is_tensor(loaded) and tuple(loaded.shape) == shape,
          f"{path}: {what} must be one tensor of shape {list(shape)}, got "
          f"{list(loaded.shape) if torch.is_tensor(loaded) else type(loaded).__name__}")
    return loaded.detach().float()


def _start_from_files(provider, attn_init, layer_norm_init, target_files) -> None:
    """An ATTEMPT run's own files: G (run_seq2seq.py:205-206, modeling_t5.py:1786-1791), the frozen
    LayerNorm (modeling_t5.py:1780-1784) and the target prompt(s) (eval_seq2seq.py: prefix_embeddings_*.pt)."""
    d, hidden = provider.up.weight.shape
    with torch.no_grad():
        if attn_init:
            provider.down.weight.copy_(_read_tensor(attn_init[0], (hidden, d), "W_down"))
            provider.up.weight.copy_(_read_tensor(attn_init[1], (d, hidden), "W_up"))
        if layer_norm_init:
            folder = Path(layer_norm_init)
            provider.norm_scale = _read_tensor(folder / "layer_norm_weight.pt", (d,), "the LayerNorm weight")
            provider.norm_shift = _read_tensor(folder / "layer_norm_bias.pt", (d,), "the LayerNorm bias")
        shape = tuple(provider.targets.shape[1:])
        for task, path in enumerate(target_files):
            prompt = _read_tensor(path, shape, "a target prompt")
            rows = slice(None) if len(target_files) == 1 else slice(task, task + 1)
            provider.targets[rows] = prompt


def build_attempt(target, *, sources, num_sources, length, temperature, target_init, tasks, attn_hidden,
                  train_layer_norm, save_prompt_only, seed, compat, attn_init=(), layer_norm_init=None,
                  target_files=()):
    if sources:
        stacked = load_sources(target, sources)
        check(length in (None, stacked.shape[1]),
              f"Attempt.length={length} but the source prompts have {stacked.shape[1]} tokens")
        names = [str(s).rstrip("/").rsplit("/", 1)[-1] for s in sources]
    else:
        stacked = _random_sources(target, num_sources, length or 100, seed, compat)
        names = [f"source{i}" for i in range(num_sources)]
    d = target.hidden_size
    targets = stacked[target_init].expand(max(len(tasks), 1), -1, -1)
    default_temperature = CODE_TEMPERATURE if compat == "attempt" else d * math.e
    provider = AttemptPrompt(stacked, targets, temperature or default_temperature, attn_hidden, train_layer_norm,
                             tuple(tasks), names)
    provider.adapter_name = target.name
    _start_from_files(provider, attn_init, layer_norm_init, target_files)
    if compat == "attempt":
        provider.__dict__["pad_source"] = _pad_source(target)
    if save_prompt_only:
        provider._register_state_dict_hook(_drop_g_from_state)
    attach_prompt(target, stacked[0], provider)


def _example(model, tmp_dir):
    return Attempt(sources=save_random_prompts(model, tmp_dir), attn_hidden=8)


register_method("attempt", Attempt, build_attempt, example=_example)
