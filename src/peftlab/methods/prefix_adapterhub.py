"""AdapterHub's prefix tuning (adapters 1.3, methods/prefix_tuning.py), as its models compute it.

One prefix module per *location* (prefix_tuning.py:122-213): "encoder_prefix" (the encoder's
self-attention of T5 and BART, with `encoder_prefix`), "self_prefix" (every other self-attention: BERT's,
GPT-2's, Llama's, the T5/BART decoder's) and "cross_prefix" (the T5/BART decoder's cross-attention, with
`cross_prefix`). Each computes the key/value prefixes of its L layers at once: Embedding(m, d) ->
Linear(d, bottleneck_size) -> f -> Linear(bottleneck_size, L·2·heads·head_dim), or with `flat` one trained
vector of m·L·2·heads·head_dim; laid out token, layer, key/value, head, head dim (:58-74), dropout on
the result. The prefixes join the keys and values after the model's cache update and rotary embedding,
always attended, at no position of their own: the real tokens keep positions 0, 1, ... (peftlab's
`PrefixTuning` shifts them by m, as HF PEFT does). On T5, AdapterHub computes the relative position bias
over all m + n keys at once (models/t5/modeling_t5.py:137-160): the prefix columns sit at key positions
0..m-1 and the real keys at m.., while the queries stay at 0.. — the real tokens' own bias is shifted by m.

What AdapterHub's SDPA path computes on GPT-2 and Llama instead — the prefix masked out of a padded batch
(the boolean mask is inverted, prefix_tuning.py:608-615), keys misaligned by `is_causal` without a mask
— is not reproduced: this is its eager attention's result (docs/fidelity.md H17-H19).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from .. import attention
from ..config import LayeredConfig, check
from ..registry import register_method
from ..targeting import LayerSelection
from .prefix import relative_bias_source

NEVER = float("inf")     # no layer index reaches it


@dataclass
class AdapterHubPrefixTuning(LayeredConfig):
    """AdapterHub's `PrefixTuningConfig` (its fields; `leave_out` per stack, as every peftlab method)."""

    encoder_prefix: bool = True
    cross_prefix: bool = True
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    compat: str | None = "adapterhub"
    compat_choices = ("adapterhub",)

    def validate(self):
        name = type(self).__name__
        check(self.compat == "adapterhub", f"{name} is AdapterHub's method: compat must be 'adapterhub', "
                                           f"got {self.compat!r} (pl.PrefixTuning is peftlab's)")
        check(self.prefix_length >= 1, f"{name}.prefix_length must be >= 1, got {self.prefix_length}")
        check(self.bottleneck_size >= 1, f"{name}.bottleneck_size must be >= 1, got {self.bottleneck_size}")
        check(0.0 <= self.dropout < 1.0, f"{name}.dropout must be in [0, 1), got {self.dropout}")
        check(self.non_linearity.lower() in ACT2FN, f"{name}.non_linearity {self.non_linearity!r} is not an "
                                                    f"activation transformers knows")


class LocationPrefix(nn.Module):
    """The prefixes of one location's L layers, with AdapterHub's tensor names (wte, control_trans)."""

    def __init__(self, length: int, n_layers: int, heads: int, head_dim: int, d_model: int, flat: bool,
                 bottleneck: int, non_linearity: str, dropout: float):
        super().__init__()
        self.length, self.heads, self.head_dim = length, heads, head_dim
        out = n_layers * 2 * heads * head_dim
        if flat:    # AdapterHub: torch.randn (FlatPrefixTuning, prefix_tuning.py:96-98)
            self.control_trans = nn.Parameter(torch.randn(length * out))
        else:
            self.wte = nn.Embedding(length, d_model)
            self.control_trans = nn.Sequential(nn.Linear(d_model, bottleneck), ACT2FN[non_linearity.lower()],
                                               nn.Linear(bottleneck, out))
        self.dropout = nn.Dropout(dropout)

    def layer_kv(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) prefixes of the location's `layer`-th layer, each (batch, heads, m, head_dim)."""
        width = 2 * self.heads * self.head_dim
        rows = slice(layer * width, (layer + 1) * width)
        if isinstance(self.control_trans, nn.Parameter):
            both = self.control_trans.view(self.length, -1)[:, rows]
        else:   # only this layer's rows of the last Linear
            first, act, last = self.control_trans
            both = F.linear(act(first(self.wte.weight)), last.weight[rows], last.bias[rows])
        both = both.view(1, self.length, 2, self.heads, self.head_dim).expand(batch, -1, -1, -1, -1)
        both = self.dropout(both).permute(2, 0, 3, 1, 4)      # per row its own dropout mask, as AdapterHub
        return both[0], both[1]


class ZeroBias(attention.AttentionExtension):
    """T5 after a change of prefixing within the stack: no relative position bias (see `_bias_changes`)."""

    def before(self, call: attention.AttentionCall) -> None:
        if call.kwargs.get("position_bias") is not None:
            bias = call.kwargs["position_bias"]
            call.kwargs["position_bias"] = bias.new_zeros(*bias.shape[:-1], call.key.shape[2])


class AdapterHubPrefix(ZeroBias):
    def __init__(self, prefix: LocationPrefix, layer: int, relative_bias: nn.Module | None, zero_bias: bool):
        super().__init__()
        self.__dict__["prefix"] = prefix              # shared; saved once, in the adapter's home
        self.__dict__["relative_bias"] = relative_bias
        self.layer, self.zero_bias = layer, zero_bias

    def before(self, call: attention.AttentionCall) -> None:
        key, value = self.prefix.layer_kv(self.layer, call.key.shape[0])
        call.prepend_kv(key, value)
        if self.zero_bias:
            super().before(call)
        elif self.relative_bias is not None and call.kwargs.get("position_bias") is not None:
            # T5: one relative bias over prefix and real keys, as if the prefix were the first m tokens
            keys = call.key.shape[2]
            call.kwargs["position_bias"] = self.relative_bias.compute_bias(
                call.q_length, keys, device=call.query.device, past_seen_tokens=keys - self.prefix.length
                - call.q_length).to(call.kwargs["position_bias"].dtype)


def _bias_changes(target, sites) -> tuple[int, list]:
    """T5 passes each layer's position bias to the next; AdapterHub's T5 recomputes it when the key count
    changes, and the layers after the first have no relative bias to compute: zeros from the first layer
    whose prefixing differs from layer 0's on (modeling_t5.py:137-160). (First such layer, the
    unprefixed self-attention sites from there on.) Nothing changes without a relative bias (cross-attention
    has none: AdapterHub's zeros there are what peftlab gives the prefix columns anyway)."""
    if sites[0].slot == "cross_attn" or relative_bias_source(target, sites[0]) is None:
        return NEVER, []
    every = attention.attention_sites(target, (sites[0].stack,), LayerSelection())
    prefixed = {site.layer for site in sites}
    first = next((s.layer for s in every if (s.layer in prefixed) != (every[0].layer in prefixed)), NEVER)
    return first, [s for s in every if s.layer >= first and s.layer not in prefixed]


def location_sites(target, selection: LayerSelection, encoder_prefix: bool, cross_prefix: bool) -> dict:
    """Location -> its attention sites in layer order (the order AdapterHub numbers a location's layers)."""
    stacks = target.stacks()
    seq2seq = "encoder" in stacks and "decoder" in stacks
    out = {}
    for stack in stacks:
        location = "encoder_prefix" if seq2seq and stack == "encoder" else "self_prefix"
        if location == "encoder_prefix" and not encoder_prefix:
            continue
        out[location] = attention.attention_sites(target, (stack,), selection)
    if cross_prefix and seq2seq and "cross_attn" in target.layout.slot_names():
        out["cross_prefix"] = target.sites("cross_attn", selection, ("decoder",))
    return {k: v for k, v in out.items() if v}


def build_adapterhub_prefix(target, *, encoder_prefix, cross_prefix, flat, prefix_length, bottleneck_size,
                            non_linearity, dropout, layers, encoder_layers, decoder_layers, leave_out, compat):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    located = location_sites(target, selection, encoder_prefix, cross_prefix)
    check(bool(located), "AdapterHub prefix tuning: no attention layer left to prefix")
    home = target.home()
    home.prefix_pool = nn.ModuleDict()
    device = next(target.model.parameters()).device
    for location, sites in located.items():
        geometry = {attention.kv_geometry(target.module(s.path)) for s in sites}
        check(len(geometry) == 1, f"AdapterHub prefix tuning needs one key/value shape per location, found "
                                  f"{sorted(geometry)}")
        heads, head_dim = geometry.pop()
        prefix = LocationPrefix(prefix_length, len(sites), heads, head_dim, target.hidden_size, flat,
                                bottleneck_size, non_linearity, dropout).to(device)
        home.prefix_pool[location] = prefix
        first, unprefixed = _bias_changes(target, sites)
        for layer, site in enumerate(sites):
            bias = relative_bias_source(target, site) if site.slot != "cross_attn" else None
            attention.install(target, site, AdapterHubPrefix(prefix, layer, bias, site.layer >= first))
        for site in unprefixed:
            attention.install(target, site, ZeroBias())


def _example(model, tmp_dir):
    return AdapterHubPrefixTuning(prefix_length=3, bottleneck_size=8)


register_method("adapterhub_prefix_tuning", AdapterHubPrefixTuning, build_adapterhub_prefix,
                aliases=("ah_prefix_tuning",), example=_example)
