"""AdapterHub's LoRA and (IA)³, placed where AdapterHub places them (adapters 1.3, methods/lora.py).

AdapterHub configures both with one config (`LoRAConfig`; `IA3Config` is the same with
composition_mode="scale"). `selfattn_lora` wraps the matrices `attn_matrices` names in every attention
module it wraps: cross-attention too on T5 and BART (models/t5/mixin_t5.py:22-28, models/bart/
mixin_bart.py:20-27). `intermediate_lora` and `output_lora` wrap the FFN projections it calls "intermediate"
and "output" — on Llama the *down* and *up* projections (models/llama/mixin_llama.py:26-27), on gated T5
wi_1 only (mixin_t5.py:62-69). GPT-2's fused c_attn gets one grouped update over the enabled q/k/v
blocks (lora.py:1065-1287). A LoRA update is s·B A x with s = alpha / r (lora.py:64-175); an (IA)³
vector l scales the projection's output as out ⊙ (alpha · l) (lora.py:236-314), and on GPT-2's fused
c_attn the blocks it does not scale are still multiplied by alpha (lora.py:1260-1282: the padding of ones
is scaled too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import LayeredConfig, check
from ..registry import register_method
from ..runtime import Part
from ..targeting import LayerSelection, feature_dims
from .ia3 import IA3Part
from .lora import LoRAPart

MATRICES = ("q", "k", "v")
# AdapterHub's "intermediate" and "output" FFN projections where peftlab's slots differ:
# layout -> location -> (slot, module names in order of preference: the first one a layer has)
FFN_SITES = {
    "t5": {"intermediate": ("ffn.in", ("wi_1", "wi")), "output": ("ffn.out", ("wo",))},
    "llama": {"intermediate": ("ffn.out", ("down_proj",)), "output": ("ffn.in", ("up_proj",))},
}
DEFAULT_FFN_SITES = {"intermediate": ("ffn.in", None), "output": ("ffn.out", None)}


@dataclass
class AdapterHubLoRA(LayeredConfig):
    """AdapterHub's `LoRAConfig`: the same fields, AdapterHub's placement. `leave_out` counts the layers of
    each stack from 0 (AdapterHub numbers a decoder's layers after the encoder's; pl.load translates)."""

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    attn_matrices: tuple[str, ...] = ("q", "v")
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    composition_mode: Literal["add", "scale"] = "add"
    init_weights: Literal["lora", "bert", "ia3"] = "lora"
    compat: str | None = "adapterhub"
    compat_choices = ("adapterhub",)

    def validate(self):
        name = type(self).__name__
        check(self.compat == "adapterhub", f"{name} is AdapterHub's method: compat must be 'adapterhub', "
                                           f"got {self.compat!r} (pl.LoRA and pl.IA3 are peftlab's)")
        check(self.r > 0, f"{name}.r must be positive, got {self.r}")
        check(self.alpha != 0, f"{name}.alpha 0 scales the update to nothing; give a non-zero alpha")
        check(0.0 <= self.dropout < 1.0, f"{name}.dropout must be in [0, 1), got {self.dropout}")
        bad = [m for m in self.attn_matrices if m not in MATRICES]
        check(not bad, f"{name}.attn_matrices: {bad[0] if bad else ''!r} is not one of {list(MATRICES)}")
        check(not self.selfattn_lora or bool(self.attn_matrices),
              f"{name}.attn_matrices is empty while selfattn_lora is on")
        check(self.selfattn_lora or self.intermediate_lora or self.output_lora,
              f"{name}: set selfattn_lora, intermediate_lora and/or output_lora, else nothing is placed")
        if self.composition_mode == "scale":   # lora.py:249-260
            check(self.r == 1, f"{name}.r must be 1 with composition_mode='scale' (AdapterHub's (IA)^3), "
                               f"got {self.r}")
            check(self.dropout == 0, f"{name}.dropout: AdapterHub's (IA)^3 has no dropout, got {self.dropout}")

    @property
    def identity_at_init(self) -> bool:
        if self.composition_mode == "scale":
            return self.init_weights == "ia3" and self.alpha == 1
        return self.init_weights == "lora"

    @property
    def mergeable(self) -> bool:
        return True


@dataclass
class AdapterHubIA3(AdapterHubLoRA):
    """AdapterHub's `IA3Config`: keys, values and the FFN "intermediate" projection's output, scaled."""

    intermediate_lora: bool = True
    attn_matrices: tuple[str, ...] = ("k", "v")
    r: int = 1
    alpha: float = 1.0
    composition_mode: Literal["add", "scale"] = "scale"
    init_weights: Literal["lora", "bert", "ia3"] = "ia3"


def _init_(tensors, init: str, scale_mode: bool) -> None:
    """lora.py:107-118 (LoRA) and :271-277 (IA3): lora A kaiming / B zeros; bert N(0, 0.02²); ia3 ones."""
    with torch.no_grad():
        for i, tensor in enumerate(tensors):
            if init == "bert":
                nn.init.normal_(tensor, std=0.02)
            elif init == "ia3":
                nn.init.ones_(tensor)
            elif scale_mode or i == 1:
                nn.init.zeros_(tensor)
            else:
                nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


class ScaledIA3Part(IA3Part):
    """out ⊙ (alpha · l) on a projection's output."""

    def __init__(self, dim: int, alpha: float):
        super().__init__(dim, feedforward=False)
        self.alpha = alpha

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * (self.ia3_l * self.alpha).to(t.dtype)

    def merge_scale(self):
        return self.ia3_l * self.alpha, "out"


class _FusedQKV(Part):
    """GPT-2's fused c_attn: AdapterHub's update over the enabled q/k/v blocks, with its tensors' shapes."""

    def __init__(self, out_features: int, enabled: tuple[bool, ...], r: int, scaling: float):
        super().__init__()
        self.enabled, self.block, self.r, self.scaling = enabled, out_features // len(enabled), r, scaling
        self.lora_B = nn.Parameter(torch.zeros(sum(enabled) * self.block, r))

    def _assemble(self, pieces, filler: torch.Tensor, dim: int) -> torch.Tensor:
        """The enabled blocks in their places among the q/k/v blocks, `filler` in the others."""
        pieces = iter(pieces)
        return torch.cat([next(pieces) if on else filler for on in self.enabled], dim=dim)


class FusedLoRAPart(_FusedQKV):
    """lora_A (n·r, in), lora_B (n·block, r): block g's update is B_g A_g, one dropout mask for all."""

    role = "add"

    def __init__(self, in_features: int, out_features: int, enabled, r: int, alpha: float, dropout: float):
        super().__init__(out_features, enabled, r, alpha / r)
        self.lora_A = nn.Parameter(torch.zeros(sum(enabled) * r, in_features))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.dropout(x.to(self.lora_A.dtype)) @ self.lora_A.T
        ups = [piece @ b.T for piece, b in zip(a.split(self.r, dim=-1), self.lora_B.split(self.block))]
        return (self._assemble(ups, torch.zeros_like(ups[0]), -1) * self.scaling).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        deltas = [b @ a for a, b in zip(self.lora_A.split(self.r), self.lora_B.split(self.block))]
        return self._assemble(deltas, torch.zeros_like(deltas[0]), 0) * self.scaling


class FusedIA3Part(_FusedQKV):
    """lora_B (n·block, 1): the output scaled by alpha · l in the enabled blocks and by alpha elsewhere."""

    role = "output"

    def __init__(self, out_features: int, enabled, alpha: float):
        super().__init__(out_features, enabled, 1, alpha)

    def scale_vector(self) -> torch.Tensor:
        ones = torch.ones_like(self.lora_B[: self.block, 0])
        return self._assemble(self.lora_B[:, 0].split(self.block), ones, 0) * self.scaling

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.scale_vector().to(t.dtype)

    def merge_scale(self):
        return self.scale_vector(), "out"


def _ffn_sites(target, location: str, selection) -> list:
    slot, names = FFN_SITES.get(target.layout.name, DEFAULT_FFN_SITES)[location]
    sites = target.sites(slot, selection)
    if names is None:
        return sites
    chosen = {}
    for name in names:   # per layer, the first name of the list the layer has
        for site in sites:
            if site.path.rsplit(".", 1)[-1] == name:
                chosen.setdefault((site.stack, site.layer), site)
    return list(chosen.values())


def _attention_sites(target, matrices, selection) -> list:
    slots = target.layout.slot_names()
    sites, seen = [], set()
    for prefix in ("attn", "cross_attn"):      # AdapterHub wraps every attention module's projections
        for matrix in matrices:
            slot = f"{prefix}.{matrix}"
            if slot not in slots:
                continue
            for site in target.sites(slot, selection):
                if site.path not in seen:
                    seen.add(site.path)
                    sites.append(site)
    return sites


def _place(target, site, *, r, alpha, dropout, scale_mode, init, enabled=None):
    module = target.module(site.path)
    dims = feature_dims(module)
    check(dims is not None, f"AdapterHub LoRA cannot wrap {site.path}: it is not a linear projection")
    if enabled is not None and scale_mode:
        part = FusedIA3Part(dims[1], enabled, alpha)
        _init_([part.lora_B], init, True)
    elif enabled is not None:
        part = FusedLoRAPart(dims[0], dims[1], enabled, r, alpha, dropout)
        _init_([part.lora_A, part.lora_B], init, False)
    elif scale_mode:
        part = ScaledIA3Part(dims[1], alpha)
        _init_([part.ia3_l], init, True)
    else:
        part = LoRAPart(dims[0], dims[1], r, alpha, dropout)
        _init_([part.lora_A.weight, part.lora_B.weight], init, False)
    target.place(site, part)


def build_adapterhub_lora(target, *, selfattn_lora, intermediate_lora, output_lora, attn_matrices, r, alpha,
                          dropout, composition_mode, init_weights, compat, layers, encoder_layers, decoder_layers,
                          leave_out):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    common = dict(r=r, alpha=alpha, dropout=dropout, scale_mode=composition_mode == "scale", init=init_weights)
    if selfattn_lora and target.layout.attention.get("fused_qkv"):
        enabled = tuple(m in attn_matrices for m in MATRICES)
        for site in target.sites("attn.qkv", selection):
            _place(target, site, enabled=enabled, **common)
    elif selfattn_lora:
        for site in _attention_sites(target, attn_matrices, selection):
            _place(target, site, **common)
    for on, location in ((intermediate_lora, "intermediate"), (output_lora, "output")):
        if on:
            for site in _ffn_sites(target, location, selection):
                _place(target, site, **common)


register_method("adapterhub_lora", AdapterHubLoRA, build_adapterhub_lora, aliases=("ah_lora",))
register_method("adapterhub_ia3", AdapterHubIA3, build_adapterhub_lora, aliases=("ah_ia3",))
