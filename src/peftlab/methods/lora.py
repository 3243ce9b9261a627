"""LoRA (Hu et al.): h = W0 x + (alpha / r) B A x, with A kaiming-uniform and B zero (identity at init)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import LayeredConfig, check
from ..registry import register_method
from ..runtime import Part
from ..targeting import LayerSelection, feature_dims, is_conv1d


@dataclass
class LoRA(LayeredConfig):
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    slots: tuple[str, ...] = ("attn.q", "attn.v")
    target_modules: tuple[str, ...] | None = None   # module-name suffixes or full-path regexes; overrides slots
    bias: bool = False    # a trainable bias b in the update, s·(B A x + b), zero at the start (kernel-adapters)
    rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r (rank-stabilized LoRA; PEFT's use_rslora)
    rank_pattern: dict = field(default_factory=dict)    # module-name pattern -> r there (PEFT's meaning)
    alpha_pattern: dict = field(default_factory=dict)   # module-name pattern -> alpha there
    dora: bool = False    # weight-decomposed LoRA (Liu et al. 2024): a learned magnitude per output row
    train_biases: bool = False   # every bias of the base model also trains in place (PEFT's bias="all")

    def validate(self):
        check(self.r > 0, f"LoRA.r must be positive, got {self.r}")
        check(self.alpha is None or self.alpha != 0, "LoRA.alpha 0 scales the update to nothing; give a non-zero alpha")
        check(0.0 <= self.dropout < 1.0, f"LoRA.dropout must be in [0, 1), got {self.dropout}")
        check(bool(self.slots) or bool(self.target_modules), "LoRA needs slots or target_modules")
        check(not (self.bias and self.train_biases), "LoRA: bias (a bias in the update) and train_biases (the "
                                                     "base biases train) together are not supported")
        for key, r in self.rank_pattern.items():
            check(isinstance(r, int) and r > 0, f"LoRA.rank_pattern[{key!r}] must be a positive int, got {r!r}")
        for key, a in self.alpha_pattern.items():
            check(isinstance(a, (int, float)) and a != 0, f"LoRA.alpha_pattern[{key!r}] must be non-zero, got {a!r}")

    @property
    def identity_at_init(self) -> bool:
        return True

    @property
    def mergeable(self) -> bool:
        return True


class LoRAPart(Part):
    role = "add"

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float,
                 bias: bool = False, rslora: bool = False):
        super().__init__()
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        # kernel-adapters' LoRALinear (nlg/adapters/low_rank_layer.py:97-98,147,222-223): b, zeros, scaled
        self.lora_bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.lora_A.weight.dtype
        y = self.lora_B(self.lora_A(self.dropout(x.to(dtype))))
        if self.lora_bias is not None:
            y = y + self.lora_bias
        return (y * self.scaling).to(x.dtype)

    def add_to(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """h + s·B A x with the scale and the sum inside the up GEMM (beta = 1, alpha = s): two fewer
        passes over the (tokens x out) output than adding a scaled delta, forward and backward alike."""
        weight = self.lora_B.weight
        if h.dtype != weight.dtype or torch.is_autocast_enabled(h.device.type) or self.lora_bias is not None:
            return h + self(x)
        a = self.lora_A(self.dropout(x.to(weight.dtype)))
        out = torch.addmm(h.reshape(-1, h.shape[-1]), a.reshape(-1, a.shape[-1]), weight.t(), alpha=self.scaling)
        return out.view(h.shape)

    def delta_bias(self) -> torch.Tensor | None:
        """What merging adds to the base layer's bias (None: nothing)."""
        return None if self.lora_bias is None else self.lora_bias * self.scaling

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, s·B): ΔW = (s·B) A, the update as two factors with the scale folded into B."""
        return self.lora_A.weight, self.lora_B.weight * self.scaling

    def delta_weight(self) -> torch.Tensor:
        a, b = self.factors()
        return b @ a


class DoRAPart(LoRAPart):
    """DoRA: W' = m ⊙ (W + s·B A) / ||W + s·B A|| (row norms, the norm held constant in the backward pass,
    as the paper's section 4.3 advises), m starting at ||W||. Added to the base output h = W x + b:
    (m/||·|| − 1) ⊙ W x + (m/||·||) ⊙ s·B A x."""

    exact_unmerge_only = True     # delta_weight() reads W: after a merge, only the kept weights undo it

    def __init__(self, base_layer: nn.Module, conv1d: bool, in_features: int, out_features: int, r: int,
                 alpha: float, dropout: float, rslora: bool = False):
        super().__init__(in_features, out_features, r, alpha, dropout, False, rslora)
        self.__dict__["base_layer"] = base_layer      # a reference, not a submodule: the host owns it
        self.conv1d = conv1d
        self.magnitude = nn.Parameter(self.base_weight().detach().norm(dim=1).clone())

    def base_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight
        return weight.T if self.conv1d else weight

    def scale(self) -> torch.Tensor:
        weight = self.base_weight()
        norm = (weight + self.scaling * self.lora_B.weight @ self.lora_A.weight).norm(dim=1).detach()
        return self.magnitude / norm.to(self.magnitude.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale().to(x.dtype)
        base = torch.nn.functional.linear(x, self.base_weight().to(x.dtype))
        return (scale - 1) * base + scale * super().forward(x)

    def add_to(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return h + self(x)

    def delta_weight(self) -> torch.Tensor:
        weight = self.base_weight()
        a, b = self.factors()
        return self.scale()[:, None] * (weight + b @ a) - weight


def lora_sites(target, slots, target_modules, selection):
    if target_modules:
        return target.pattern_sites(target_modules, selection)
    sites, seen = [], set()
    for slot in slots:
        for site in target.sites(slot, selection):
            if site.path not in seen:
                seen.add(site.path)
                sites.append(site)
    return sites


def pattern_value(patterns: dict, path: str, default):
    r"""PEFT's per-module override: the first pattern whose match ends the module path (`(.*\.)?KEY$`)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def build_lora(target, *, r, alpha, dropout, slots, target_modules, bias, rslora, rank_pattern, alpha_pattern,
               dora, train_biases, layers, encoder_layers, decoder_layers, leave_out):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    check(not (dora and bias), "LoRA: dora and bias together are not supported")
    for site in lora_sites(target, slots, target_modules, selection):
        module = target.module(site.path)
        dims = feature_dims(module)
        check(dims is not None, f"LoRA cannot wrap {site.path}: it is not a linear projection")
        rank, scale = pattern_value(rank_pattern, site.path, r), pattern_value(alpha_pattern, site.path, alpha)
        if dora:
            part = DoRAPart(module, is_conv1d(module), dims[0], dims[1], rank, scale, dropout, rslora)
        else:
            part = LoRAPart(dims[0], dims[1], rank, scale, dropout, bias, rslora)
        target.place(site, part)
    if train_biases:
        target.claim(sorted(n for n in target.base_parameters() if n.rpartition(".")[2] == "bias"))


register_method("lora", LoRA, build_lora)
