"""Method combinations under one config and one name: MAM and UniPELT.

**MAM** (He et al., 2022, "Towards a unified view of parameter-efficient transfer learning"): prefix
tuning in every self-attention plus a parallel adapter beside every FFN (scaled by 4, up-projection zero).
Its parts are exactly those of `PrefixTuning` and `Parallel`, built by their own builders through the same
`AttachTarget`: one attachment, one name, one save file.

**UniPELT** (Mao et al., 2022): LoRA (on W_q and W_v), prefix tuning and a sequential bottleneck adapter
(after the FFN, Pfeiffer placement), each behind a learned gate computed per token from that module's own
input, g = sigmoid(w . x + b) (w ~ N(0, 0.01^2), b = 0, so g is near 0.5 at init):
    LoRA      h = W0 x + g_L(x) (alpha/r) B A x
    adapter   h <- h + g_A(h) * adapter_branch(h)
    prefix    each query's attention weight on the prefix keys is multiplied by g_P(x_t) before the
              softmax normalizes (an additive log g_P on the prefix columns of the scores), where x_t
              is the attention input of query token t.
Per-token gates keep cached `generate()` equal to a full forward (a gate pooled over the sequence would
not). `gates=False` gives the plain union of the three methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .. import attention
from ..config import MethodConfig, check
from ..registry import register_method
from ..runtime import Handoff, HandoffTap, Part
from ..targeting import LayerSelection, feature_dims
from .bottleneck import BottleneckNet, Parallel, Pfeiffer, build_bottleneck
from .inducer import build_side_lora, check_nested_switches
from .head_geometry import attention_sites as projection_sites
from .lora import LoRA
from .prefix import PrefixExtension, PrefixParameters, PrefixTuning, position_shift, relative_bias_source, \
    build_prefix

@dataclass
class MAM(MethodConfig):
    prefix: PrefixTuning = field(default_factory=lambda: PrefixTuning(prefix_length=30, mlp_hidden=800))
    adapter: Parallel = field(default_factory=lambda: Parallel(reduction_factor=2.0, scaling=4.0))

    def validate(self):
        check(self.adapter.parallel, "MAM.adapter must be a parallel adapter (parallel=True)")
        check_nested_switches(self, "prefix", "adapter")


def build_mam(target, *, prefix, adapter):
    build_prefix(target, **prefix.build_kwargs())
    build_bottleneck(target, **adapter.build_kwargs())


@dataclass
class UniPELT(MethodConfig):
    lora: LoRA = field(default_factory=lambda: LoRA(r=8, alpha=2.0, slots=("attn.q", "attn.v")))
    prefix: PrefixTuning = field(default_factory=lambda: PrefixTuning(prefix_length=10, mlp_hidden=512))
    adapter: Pfeiffer = field(default_factory=lambda: Pfeiffer(reduction_factor=16.0))
    gates: bool = True

    def validate(self):
        check(not self.adapter.parallel, "UniPELT.adapter must be sequential (parallel=False)")
        check(not (self.adapter.drop_max_layers or self.adapter.drop_inference_layers),
              "UniPELT.adapter: AdapterDrop is not supported inside UniPELT")
        check_nested_switches(self, "lora", "prefix", "adapter")


class Gate(nn.Module):
    """g(x) = sigmoid(w . x + b), one value per token."""

    def __init__(self, d_in: int):
        super().__init__()
        self.linear = nn.Linear(d_in, 1)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x.to(self.linear.weight.dtype)))

    def log(self, x: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(self.linear(x.to(self.linear.weight.dtype)))


class GatedAdd(Part):
    """An additive part (LoRA) scaled per token by a gate on the same input."""

    role = "add"

    def __init__(self, inner: Part, d_in: int):
        super().__init__()
        self.inner, self.gate = inner, Gate(d_in)

    def forward(self, x):
        return self.inner(x) * self.gate(x).to(x.dtype)


class GatedSerialAdapter(Part):
    role = "output"

    def __init__(self, net: BottleneckNet, residual_before_ln: bool, d: int):
        super().__init__()
        self.net, self.residual_before_ln, self.gate = net, residual_before_ln, Gate(d)

    def forward(self, h):
        x = self.net.normed(h.to(self.net.down.weight.dtype))
        residual = h if self.residual_before_ln else x.to(h.dtype)
        return residual + (self.gate(x) * self.net.branch(x)).to(h.dtype)


class GatedPrefix(attention.AttentionExtension):
    """A layer's prefix whose attention weights are scaled per query token by g_P (log-gate on its columns)."""

    def __init__(self, inner: PrefixExtension, d_in: int):
        super().__init__()
        self.inner, self.gate = inner, Gate(d_in)
        self.inputs = Handoff("UniPELT: the gated prefix ran without its attention input")

    def before(self, call) -> None:
        x = self.inputs.take(required=False)
        m = self.inner.params.length
        self.inner.before(call)
        if x is None:   # the attention input was not seen (never the case for self-attention)
            return
        mask = call.attention_mask
        if mask.dtype == torch.bool:
            floor = torch.finfo(call.query.dtype).min
            mask = torch.zeros(mask.shape, dtype=call.query.dtype, device=mask.device).masked_fill(~mask, floor)
        log_gate = self.gate.log(x).to(mask.dtype).unsqueeze(1)                 # (b, 1, q, 1)
        mask = mask.expand(log_gate.shape[0], *mask.shape[1:])
        call.attention_mask = torch.cat([mask[..., :m] + log_gate, mask[..., m:]], dim=-1)


def build_gated_prefix(target, prefix: PrefixTuning) -> None:
    """Prefix tuning as `build_prefix` builds it, each layer's extension behind a gate."""
    selection = LayerSelection(prefix.layers, prefix.encoder_layers, prefix.decoder_layers, prefix.leave_out)
    sites = attention.attention_sites(target, prefix.stacks, selection)
    geometry = {attention.kv_geometry(target.module(s.path)) for s in sites}
    check(len(geometry) == 1, f"UniPELT.prefix needs one key/value shape across layers, found {sorted(geometry)}")
    heads, head_dim = geometry.pop()
    params = PrefixParameters(prefix.prefix_length, len(sites), heads, head_dim, prefix.flat, target.hidden_size,
                              prefix.mlp_hidden)
    target.home().prefix = params.to(next(target.model.parameters()).device)
    queries = {(s.stack, s.layer): s for s in projection_sites(target, "q", selection)}
    for layer, site in enumerate(sites):
        bias = relative_bias_source(target, site) if prefix.shift_positions else None
        query_site = queries[(site.stack, site.layer)]
        gated = GatedPrefix(PrefixExtension(params, layer, bias), feature_dims(target.module(query_site.path))[0])
        attention.install(target, site, gated)
        target.place(query_site, HandoffTap(gated.inputs))
    if prefix.shift_positions and set(target.stacks()) == {"decoder"}:
        target.add_hook(target.model.register_forward_pre_hook, position_shift(target, prefix.prefix_length),
                        with_kwargs=True)


def build_gated_adapter(target, adapter: Pfeiffer) -> None:
    selection = LayerSelection(adapter.layers, adapter.encoder_layers, adapter.decoder_layers, adapter.leave_out)
    slots = [slot for on, slot in ((adapter.mh_adapter, "attn_block_out"), (adapter.output_adapter, "ffn_block_out"))
             if on]
    for slot in slots:
        for site in target.sites(slot, selection):
            d = target.width(site.path)
            k = adapter.bottleneck_size or int(d // adapter.reduction_factor)
            check(k >= 1, f"reduction_factor {adapter.reduction_factor} gives a zero-size bottleneck for hidden size {d}")
            net = BottleneckNet(d, k, adapter.non_linearity, adapter.adapter_layernorm_before,
                                adapter.adapter_layernorm_after, adapter.scaling, adapter.init, None, adapter.init_std)
            target.place(site, GatedSerialAdapter(net, adapter.residual_before_ln, d))


def build_unipelt(target, *, lora, prefix, adapter, gates):
    if not gates:
        build_side_lora(target, lora)
        build_prefix(target, **prefix.build_kwargs())
        build_bottleneck(target, **adapter.build_kwargs())
        return
    build_side_lora(target, lora, wrap=GatedAdd)
    build_gated_prefix(target, prefix)
    build_gated_adapter(target, adapter)


def _mam_example(model, tmp_dir):
    return MAM(prefix=PrefixTuning(prefix_length=3, mlp_hidden=8), adapter=Parallel(bottleneck_size=4))


def _unipelt_example(model, tmp_dir):
    arch = model.config.model_type
    return UniPELT(lora=LoRA(r=2, alpha=4.0, slots=("attn.q", "attn.v")),
                   prefix=PrefixTuning(prefix_length=3, mlp_hidden=8, flat=arch in ("gpt2", "bert")),
                   adapter=Pfeiffer(bottleneck_size=4), gates=arch != "bart")


register_method("mam", MAM, build_mam, aliases=("mam_adapter",), example=_mam_example)
register_method("unipelt", UniPELT, build_unipelt, aliases=("uni-pelt",), example=_unipelt_example)
