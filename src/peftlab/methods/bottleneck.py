"""Bottleneck adapters h <- h + s * W_up f(W_down h + b_d) + b_u, their presets and AdapterDrop.

Placement: `mh_adapter` on the self-attention sublayer's output, `output_adapter` on the FFN sublayer's
output, both before the residual add (Houlsby); `parallel` runs the bottleneck beside the sublayer on
its input and adds the result to its output (He et al.). AdapterDrop: `leave_out` drops layers
statically; `drop_max_layers` drops the adapters of the lowest k ~ U{0..n} layers each training
step, and `drop_inference_layers` skips the lowest n layers' adapters at inference.

`compat="adapterhub"` computes AdapterHub's bottleneck adapters instead (bottleneck_adapterhub.py,
docs/fidelity.md H1-H5): `residual_before_ln` then refers to the model's own LayerNorm, and
`original_ln_before`, `adapter_residual_before_ln` and `dropout` are AdapterHub's options.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import LayeredConfig, check
from ..ops import net_dtype
from ..ops.residual_bottleneck import residual_bottleneck
from ..registry import register_method
from ..runtime import Handoff, HandoffTap, Part
from ..targeting import LayerSelection
from .bottleneck_adapterhub import build_adapterhub_bottleneck
from .invertible_adapterhub import build_adapterhub_invertible

NonLinearity = Literal["relu", "gelu", "gelu_new", "swish", "silu", "tanh"]
NORMAL_INIT_STD = {"near_identity": 0.01, "bert": 0.02}


MAX_LAYERS = 1000    # more layers than any model has: a typo, not a setting


@dataclass
class Bottleneck(LayeredConfig):
    reduction_factor: float = 16.0
    bottleneck_size: int | None = None           # overrides reduction_factor when set
    non_linearity: NonLinearity = "relu"
    mh_adapter: bool = False
    output_adapter: bool = True
    parallel: bool = False
    # peftlab: the residual is taken before the adapter's own input LayerNorm; under compat="adapterhub"
    # before the model's LayerNorm (AdapterHub's meaning), and "post_add" after the model's residual add
    residual_before_ln: bool | Literal["post_add"] = True
    adapter_layernorm_before: bool = False
    adapter_layernorm_after: bool = False
    scaling: float | Literal["learned"] = 1.0
    # near_identity: N(0, 0.01²) weights (Compacter); bert: N(0, 0.02²) (AdapterHub, kernel-adapters' GPT-2);
    # both with zero biases, std overridable by init_std; zero_up: kaiming down, zero up (MAM, LoRA)
    init: Literal["near_identity", "bert", "zero_up"] = "near_identity"
    init_std: float | None = None
    drop_max_layers: int = 0
    drop_inference_layers: int = 0
    # AdapterHub's options, with compat="adapterhub" only: the adapter's input is the sublayer's output plus
    # the residual (through the model's LayerNorm on post-norm models); the residual is added before the
    # adapter's output LayerNorm; dropout on the scaled up-projection
    original_ln_before: bool = False
    adapter_residual_before_ln: bool = False
    dropout: float = 0.0
    # AdapterHub's invertible adapter on the embeddings' output, named after the adapter (compat only)
    inv_adapter: str | None = None              # "nice" or "glow"
    inv_adapter_reduction_factor: float | None = None
    compat_choices = ("adapterhub",)

    def validate(self):
        check(self.reduction_factor > 0, f"{type(self).__name__}.reduction_factor must be positive, "
                                         f"got {self.reduction_factor}")
        check(self.bottleneck_size is None or self.bottleneck_size > 0,
              f"{type(self).__name__}.bottleneck_size must be positive, got {self.bottleneck_size}")
        check(self.mh_adapter or self.output_adapter,
              f"{type(self).__name__}: set mh_adapter and/or output_adapter, else nothing is placed")
        for name in ("drop_max_layers", "drop_inference_layers"):
            check(0 <= getattr(self, name) <= MAX_LAYERS,
                  f"{type(self).__name__}.{name} (an AdapterDrop layer count) must be in 0..{MAX_LAYERS}, "
                  f"got {getattr(self, name)}")
        check(isinstance(self.scaling, str) or self.scaling != 0,
              f"{type(self).__name__}.scaling 0 switches the adapter off; detach it instead")
        check(self.init_std is None or (self.init_std > 0 and self.init != "zero_up"),
              f"{type(self).__name__}.init_std sets the std of a normal init (near_identity, bert); "
              f"got {self.init_std} with init {self.init!r}")
        if self.compat == "adapterhub":
            self._validate_adapterhub()
            return
        for key, neutral in (("original_ln_before", False), ("adapter_residual_before_ln", False),
                             ("dropout", 0.0), ("residual_before_ln", "post_add"), ("inv_adapter", None)):
            value = getattr(self, key)
            check(value == neutral if key != "residual_before_ln" else value != neutral,
                  f"{type(self).__name__}.{key}={value!r} is AdapterHub's option: set compat='adapterhub'")

    def _validate_adapterhub(self):
        name = type(self).__name__
        check(0.0 <= self.dropout < 1.0, f"{name}.dropout must be in [0, 1), got {self.dropout}")
        check(not (self.drop_max_layers or self.drop_inference_layers),
              f"{name}.drop_max_layers / drop_inference_layers: AdapterDrop is not part of AdapterHub's "
              f"adapter configs; use compat=None")
        check(self.residual_before_ln != "post_add" or (self.original_ln_before and not self.parallel),
              f"{name}.residual_before_ln='post_add' needs original_ln_before=True and parallel=False "
              f"(AdapterHub leaves the residual unset otherwise)")
        check(not (self.parallel and self.original_ln_before),
              f"{name}.original_ln_before has no effect on a parallel adapter in AdapterHub; leave it False")
        check(self.inv_adapter in (None, "nice", "glow"),
              f"{name}.inv_adapter must be 'nice', 'glow' or None, got {self.inv_adapter!r}")
        check(self.inv_adapter is None or (self.inv_adapter_reduction_factor or 0) > 0,
              f"{name}.inv_adapter={self.inv_adapter!r} needs a positive inv_adapter_reduction_factor, got "
              f"{self.inv_adapter_reduction_factor}")

    @property
    def identity_at_init(self) -> bool:
        return self.init == "zero_up"


@dataclass
class Houlsby(Bottleneck):
    mh_adapter: bool = True
    output_adapter: bool = True
    non_linearity: NonLinearity = "swish"


@dataclass
class Pfeiffer(Bottleneck):
    """AdapterHub's Pfeiffer placement: after the FFN only, reading the FFN's output (AdapterHub's own
    adapter reads LN(h + x): `SeqBn`, docs/fidelity.md H1). (Compacter's "pfeiffer" places the adapter
    after self-attention only: `Bottleneck(mh_adapter=True, output_adapter=False)`, see configs/.)"""


@dataclass
class Parallel(Bottleneck):
    """He et al.'s parallel adapter on the FFN, scaled by s = 4, up-projection initialized to zero."""

    parallel: bool = True
    scaling: float | Literal["learned"] = 4.0
    init: Literal["near_identity", "bert", "zero_up"] = "zero_up"


class AdapterHubPreset:
    """AdapterHub's presets (adapters 1.3 configuration/adapter_config.py): its defaults, its conventions."""

    def validate(self):
        check(self.compat == "adapterhub", f"{type(self).__name__} is AdapterHub's preset and computes what "
                                           f"AdapterHub computes: compat must be 'adapterhub', got {self.compat!r}")
        super().validate()


@dataclass
class SeqBn(AdapterHubPreset, Bottleneck):
    """AdapterHub's `SeqBnConfig` (Pfeiffer et al.): after the FFN, its input the sublayer's output plus the
    residual (through the model's LayerNorm on post-norm models), N(0, 0.02²) init."""

    original_ln_before: bool = True
    init: Literal["near_identity", "bert", "zero_up"] = "bert"
    compat: str | None = "adapterhub"


@dataclass
class DoubleSeqBn(AdapterHubPreset, Bottleneck):
    """AdapterHub's `DoubleSeqBnConfig` (Houlsby et al.): after attention and after the FFN, swish."""

    mh_adapter: bool = True
    non_linearity: NonLinearity = "swish"
    init: Literal["near_identity", "bert", "zero_up"] = "bert"
    compat: str | None = "adapterhub"


@dataclass
class SeqBnInv(SeqBn):
    """AdapterHub's `SeqBnConfig` with an invertible NICE adapter on the embeddings (MAD-X's language
    adapter, `SeqBnInvConfig`): invertible_adapterhub.py."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2.0


@dataclass
class DoubleSeqBnInv(DoubleSeqBn):
    """AdapterHub's `DoubleSeqBnConfig` with an invertible NICE adapter (`DoubleSeqBnInvConfig`)."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2.0


@dataclass
class ParBn(AdapterHubPreset, Bottleneck):
    """AdapterHub's `ParBnConfig` (He et al.): beside the FFN, fed the residual stream, reduction factor 2,
    scaled by 4, zero up-projection ("mam_adapter" init)."""

    parallel: bool = True
    reduction_factor: float = 2.0
    scaling: float | Literal["learned"] = 4.0
    init: Literal["near_identity", "bert", "zero_up"] = "zero_up"
    compat: str | None = "adapterhub"


class BottleneckNet(nn.Module):
    """down -> f -> up (-> LN) with optional input LN and scaling; returns the branch, not h + branch.

    `linear(in_features, out_features)` builds the projections (default nn.Linear); a custom factory
    (PHM, low-rank) returns modules that initialize themselves, so `init` applies to nn.Linear only."""

    def __init__(self, d: int, k: int, non_linearity: str, ln_before: bool, ln_after: bool, scaling, init: str,
                 linear=None, init_std: float | None = None):
        super().__init__()
        self.ln_before = nn.LayerNorm(d) if ln_before else None
        make = linear or nn.Linear
        self.down, self.act, self.up = make(d, k), ACT2FN[non_linearity], make(k, d)
        self.ln_after = nn.LayerNorm(d) if ln_after else None
        self.scale = nn.Parameter(torch.ones(1)) if scaling == "learned" else None
        self.fixed_scale = 1.0 if scaling == "learned" else float(scaling)
        self.fusable = not (ln_before or ln_after or self.scale is not None) and all(
            _in_out_weight(layer) is not None for layer in (self.down, self.up))
        if linear is not None:
            pass                      # the factory's modules chose their own initialization
        elif init in NORMAL_INIT_STD:   # near_identity (Compacter) or bert: N(0, std²) weights, zero biases
            for layer in (self.down, self.up):
                nn.init.normal_(layer.weight, std=init_std or NORMAL_INIT_STD[init])
                nn.init.zeros_(layer.bias)
        else:                         # MAM / LoRA style: exact identity at init
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    @property
    def dtype(self) -> torch.dtype:
        return net_dtype(self)

    def normed(self, h):
        return self.ln_before(h) if self.ln_before is not None else h

    def branch(self, x):
        y = self.up(self.act(self.down(x)))
        if self.ln_after is not None:
            y = self.ln_after(y)
        if self.scale is not None:
            return y * self.scale
        return y if self.fixed_scale == 1.0 else y * self.fixed_scale   # skip a no-op pass over activations

    def residual(self, h):
        """h + branch(h), as one fused autograd node where the net allows it (ops/residual_bottleneck)."""
        if self.fusable and h.dtype == self.dtype and not torch.is_autocast_enabled(h.device.type):
            return residual_bottleneck(h, _in_out_weight(self.down)(), self.down.bias, _in_out_weight(self.up)(),
                                       self.up.bias, self.act, self.fixed_scale)
        return h + self.branch(h)


def _in_out_weight(layer):
    """A callable giving the (in x out) weight of a projection with a bias, or None if it has none."""
    if getattr(layer, "bias", None) is None:
        return None
    if isinstance(layer, nn.Linear):
        return layer.weight.t
    return getattr(layer, "phm_weight", None)


class DropSchedule:
    """How many of the lowest layers sit out this step (set by a model pre-hook, read by the parts)."""

    def __init__(self, max_train: int, at_inference: int):
        self.max_train, self.at_inference, self.k = max_train, at_inference, 0

    def sample(self, module, args):
        if module.training and self.max_train > 0:
            self.k = int(torch.randint(0, self.max_train + 1, ()))

    def drops(self, training: bool, layer: int | None) -> bool:
        limit = self.k if training else self.at_inference
        return layer is not None and layer < limit


class _Dropping(Part):
    def skipped(self, slot) -> bool:
        return self.schedule.drops(self.training, slot.layer)


class SerialAdapter(_Dropping):
    role = "output"

    def __init__(self, net: BottleneckNet, residual_before_ln: bool, schedule: DropSchedule):
        super().__init__()
        self.net, self.residual_before_ln, self.schedule = net, residual_before_ln, schedule

    def forward(self, h):
        if self.net.ln_before is None and h.dtype == self.net.dtype:
            return self.net.residual(h)
        x = self.net.normed(h.to(self.net.dtype))
        residual = h if self.residual_before_ln else x.to(h.dtype)
        return residual + self.net.branch(x).to(h.dtype)


class ParallelTap(HandoffTap, _Dropping):
    """Sees the sublayer's input and hands it to the branch's output part within the same forward."""

    def __init__(self, owner: "ParallelOut"):
        super().__init__(owner.inputs)
        self.schedule = owner.schedule


class ParallelOut(_Dropping):
    role = "add"

    def __init__(self, net: BottleneckNet, schedule: DropSchedule):
        super().__init__()
        self.net, self.schedule = net, schedule
        self.inputs = Handoff("parallel adapter: the sublayer's output ran without its input tap")

    def forward(self, _x):
        x = self.inputs.take()
        return self.net.branch(self.net.normed(x.to(self.net.dtype))).to(x.dtype)


def _first_per_layer(sites):
    out = {}
    for site in sites:
        out.setdefault((site.stack, site.layer), site)
    return out


def build_bottleneck(target, *, reduction_factor, bottleneck_size, non_linearity, mh_adapter, output_adapter,
                     parallel, residual_before_ln, adapter_layernorm_before, adapter_layernorm_after, scaling,
                     init, init_std, drop_max_layers, drop_inference_layers, layers, encoder_layers,
                     decoder_layers, leave_out, linear=None, compat=None, original_ln_before=False,
                     adapter_residual_before_ln=False, dropout=0.0, inv_adapter=None,
                     inv_adapter_reduction_factor=None):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    if compat == "adapterhub":
        check(linear is None or getattr(linear, "adapterhub", False),
              "compat='adapterhub' builds AdapterHub's linear or PHM bottleneck only (no low-rank projections)")
        if inv_adapter is not None:
            build_adapterhub_invertible(target, inv_adapter, inv_adapter_reduction_factor, non_linearity)
        return build_adapterhub_bottleneck(
            target, selection, bottleneck_size=bottleneck_size, reduction_factor=reduction_factor,
            non_linearity=non_linearity, mh_adapter=mh_adapter, output_adapter=output_adapter, parallel=parallel,
            residual_before_ln=residual_before_ln, original_ln_before=original_ln_before,
            ln_before=adapter_layernorm_before, ln_after=adapter_layernorm_after,
            adapter_residual_before_ln=adapter_residual_before_ln, scaling=scaling, init=init, init_std=init_std,
            dropout=dropout, linear=linear)
    schedule = DropSchedule(drop_max_layers, drop_inference_layers)
    if drop_max_layers:
        target.add_hook(target.model.register_forward_pre_hook, schedule.sample)
    placements = [(on, out_slot, in_slot) for on, out_slot, in_slot in
                  ((mh_adapter, "attn_block_out", "attn.q"), (output_adapter, "ffn_block_out", "ffn.in")) if on]
    if drop_max_layers or drop_inference_layers:
        every = LayerSelection(None, None, None, ())
        depth = 1 + max((site.layer for site in target.sites(placements[0][1], every)), default=-1)
        check(max(drop_max_layers, drop_inference_layers) <= depth,
              f"AdapterDrop drops {max(drop_max_layers, drop_inference_layers)} layers but the model has {depth}")
    for _, out_slot, in_slot in placements:
        taps = _first_per_layer(target.sites(in_slot, selection)) if parallel else {}
        for site in target.sites(out_slot, selection):
            d = target.width(site.path)
            k = bottleneck_size or int(d // reduction_factor)
            check(k >= 1, f"reduction_factor {reduction_factor} gives a zero-size bottleneck for hidden size {d}")
            net = BottleneckNet(d, k, non_linearity, adapter_layernorm_before, adapter_layernorm_after, scaling, init,
                                linear, init_std)
            if not parallel:
                target.place(site, SerialAdapter(net, residual_before_ln, schedule))
                continue
            out = ParallelOut(net, schedule)
            target.place(taps[(site.stack, site.layer)], ParallelTap(out))
            target.place(site, out)


register_method("bottleneck", Bottleneck, build_bottleneck, aliases=("adapter",))
register_method("houlsby", Houlsby, build_bottleneck)
register_method("pfeiffer", Pfeiffer, build_bottleneck)
register_method("parallel", Parallel, build_bottleneck, aliases=("parallel_adapter",))
register_method("seq_bn", SeqBn, build_bottleneck, aliases=("seqbn",))
register_method("double_seq_bn", DoubleSeqBn, build_bottleneck, aliases=("doubleseqbn",))
register_method("par_bn", ParBn, build_bottleneck, aliases=("parbn",))
register_method("seq_bn_inv", SeqBnInv, build_bottleneck, aliases=("seqbninv",))
register_method("double_seq_bn_inv", DoubleSeqBnInv, build_bottleneck, aliases=("doubleseqbninv",))
