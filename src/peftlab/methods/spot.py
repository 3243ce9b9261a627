"""SPoT (Vu et al.): prompt tuning whose prompt starts from one saved prompt, or the mean of several.

`sources` are directories written by `pl.save` for PromptTuning, SPoT or Attempt adapters, or tensor files
(ATTEMPT's released `.pt` source prompts, read with weights_only). They are read when the adapter is
attached (and so again by `pl.load`, before the saved prompt overwrites the start).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MethodConfig, check
from ..registry import register_method
from .prompt import attach_prompt, read_saved_prompt, save_random_prompts


@dataclass
class SPoT(MethodConfig):
    sources: tuple[str, ...] = ()
    seed: int = 0      # compat="attempt": the draw of the source weights
    compat_choices = ("attempt",)

    def validate(self):
        check(len(self.sources) >= 1, "SPoT needs at least one saved prompt directory in sources")
        check(self.seed >= 0, f"SPoT.seed must be >= 0, got {self.seed}")


def load_sources(target, sources) -> torch.Tensor:
    """The saved prompts stacked (t, m, d), after checking widths and lengths agree with the model."""
    prompts = [read_saved_prompt(path) for path in sources]
    for path, prompt in zip(sources, prompts):
        check(prompt.dim() == 2 and prompt.shape[-1] == target.hidden_size,
              f"source prompt {path} has width {prompt.shape[-1]}, the model's hidden size is {target.hidden_size}")
        check(prompt.shape[0] == prompts[0].shape[0],
              f"source prompt {path} has {prompt.shape[0]} tokens, {sources[0]} has {prompts[0].shape[0]}")
    return torch.stack([p.float() for p in prompts])


def build_spot(target, *, sources, seed, compat):
    """The mean of the sources; ATTEMPT's code (compat="attempt", `update_prefix_weights`, modeling_t5.py:
    1800-1822) starts from Σ w_i P_i with w_i ~ U(0, 1), unnormalized (one source: that source)."""
    stacked = load_sources(target, sources)
    if compat == "attempt" and len(sources) > 1:
        weights = torch.rand(len(sources), generator=torch.Generator().manual_seed(seed))
        attach_prompt(target, torch.einsum("t,tmd->md", weights, stacked))
    else:
        attach_prompt(target, stacked.mean(dim=0))


def _example(model, tmp_dir):
    return SPoT(sources=save_random_prompts(model, tmp_dir))


register_method("spot", SPoT, build_spot, example=_example)
