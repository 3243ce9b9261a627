"""SPoT (Vu et al.): prompt tuning whose prompt starts from one saved prompt, or the mean of several.

`sources` are directories written by `pl.save` for PromptTuning, SPoT or Attempt adapters. They are read
when the adapter is attached (and so again by `pl.load`, before the saved prompt overwrites the start).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MethodConfig, check
from ..registry import register_method
from .prompt import PromptTuning, attach_prompt, read_saved_prompt


@dataclass
class SPoT(MethodConfig):
    sources: tuple[str, ...] = ()

    def validate(self):
        check(len(self.sources) >= 1, "SPoT needs at least one saved prompt directory in sources")


def load_sources(target, sources) -> torch.Tensor:
    """The saved prompts stacked (t, m, d), after checking widths and lengths agree with the model."""
    prompts = [read_saved_prompt(path) for path in sources]
    for path, prompt in zip(sources, prompts):
        check(prompt.dim() == 2 and prompt.shape[-1] == target.hidden_size,
              f"source prompt {path} has width {prompt.shape[-1]}, the model's hidden size is {target.hidden_size}")
        check(prompt.shape[0] == prompts[0].shape[0],
              f"source prompt {path} has {prompt.shape[0]} tokens, {sources[0]} has {prompts[0].shape[0]}")
    return torch.stack([p.float() for p in prompts])


def build_spot(target, *, sources):
    attach_prompt(target, load_sources(target, sources).mean(dim=0))


def save_example_prompts(arch: str, tmp_dir, count: int = 2, length: int = 4) -> tuple[str, ...]:
    """Save `count` distinct prompt-tuning runs on a tiny `arch` model (for the contract suite's examples;
    `tiny` is the test suite's module of tiny models, on the path under pytest)."""
    from pathlib import Path

    import peftlab as pl
    from tiny import tiny_model
    paths = []
    for seed in range(count):
        path = Path(tmp_dir) / f"source_prompt_{arch}_{seed}"
        if not path.exists():
            model = tiny_model(arch)
            pl.attach(model, PromptTuning(length=length, seed=seed), "source")
            pl.save(model, path)
        paths.append(str(path))
    return tuple(paths)


def _example(arch, tmp_dir):
    return SPoT(sources=save_example_prompts(arch, tmp_dir))


register_method("spot", SPoT, build_spot, example=_example)
