"""Prefix tuning (Li & Liang): trainable key and value prefixes of `prefix_length` in every self-attention.

The prefix is one tensor of shape (m, n_layers * 2 * kv_width) laid out as HF PEFT lays it out (token,
then layer, then key/value, then head, then head dim), so PEFT export/import is a rename. `flat` trains it
directly; otherwise it is reparameterized as Embedding(m, d) -> Linear(d, mlp_hidden) -> tanh ->
Linear(mlp_hidden, n_layers * 2 * kv_width), and `peftlab.eject.eject_prefix` replaces the MLP by the flat
tensor it computes (identical outputs, a smaller file).

Prefixes go in through `peftlab.attention` (prepended after the KV cache update, so `generate()` works).
With `shift_positions` (default) the real tokens sit after the prefix, positions m, m+1, ..., as when
the prefix is a KV-cache of m tokens (Li & Liang, HF PEFT): decoder-only models get their `position_ids`
shifted by m, and T5 gets the relative-position bias of the prefix columns. BERT, RoBERTa and BART keep
their positions and the prefix has none (their learned absolute positions cannot be shifted from outside).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .. import attention, decoding
from ..config import LayeredConfig, check
from ..prompting import is_active
from ..registry import register_method
from ..targeting import LayerSelection


@dataclass
class PrefixTuning(LayeredConfig):
    prefix_length: int = 30
    flat: bool = False
    mlp_hidden: int = 512
    stacks: tuple[str, ...] | None = None      # None: every stack; ("decoder",) as HF PEFT does on T5
    shift_positions: bool = True

    def validate(self):
        check(self.prefix_length >= 1, f"PrefixTuning.prefix_length must be >= 1, got {self.prefix_length}")
        check(self.mlp_hidden >= 1, f"PrefixTuning.mlp_hidden must be >= 1, got {self.mlp_hidden}")


class PrefixParameters(nn.Module):
    """The prefix of every layer: flat (m, L*2*width) or computed by the reparameterization MLP."""

    def __init__(self, length: int, n_layers: int, heads: int, head_dim: int, flat: bool, d_model: int,
                 mlp_hidden: int):
        super().__init__()
        self.length, self.n_layers, self.heads, self.head_dim = length, n_layers, heads, head_dim
        out = n_layers * 2 * heads * head_dim
        if flat:
            self.embedding = nn.Parameter(torch.randn(length, out))
        else:
            self.embedding = nn.Embedding(length, d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, out))

    @property
    def flat(self) -> bool:
        return isinstance(self.embedding, nn.Parameter)

    def _rows(self, layer: int) -> slice:
        width = self.heads * self.head_dim
        return slice(2 * layer * width, (2 * layer + 2) * width)

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) prefixes of one layer, each (1, heads, m, head_dim)."""
        rows = self._rows(layer)
        if self.flat:
            both = self.embedding[:, rows]
        else:  # only this layer's rows of the last Linear: the MLP costs one full pass per forward in total
            last = self.mlp[2]
            hidden = self.mlp[1](self.mlp[0](self.embedding.weight))
            both = F.linear(hidden, last.weight[rows], last.bias[rows])
        both = both.view(self.length, 2, self.heads, self.head_dim).permute(1, 2, 0, 3)
        return both[0].unsqueeze(0), both[1].unsqueeze(0)

    @torch.no_grad()
    def full(self) -> torch.Tensor:
        """The whole prefix as the flat tensor (m, L*2*width)."""
        return self.embedding.detach().clone() if self.flat else self.mlp(self.embedding.weight).detach()


class PrefixExtension(attention.AttentionExtension):
    def __init__(self, params: PrefixParameters, layer: int, relative_bias: nn.Module | None):
        super().__init__()
        self.__dict__["params"] = params            # shared; saved once, under home.prefix
        self.__dict__["relative_bias"] = relative_bias
        self.layer = layer

    def before(self, call: attention.AttentionCall) -> None:
        key, value = self.params.layer_kv(self.layer)
        bias = None
        if self.relative_bias is not None and call.kwargs.get("position_bias") is not None:
            bias = _prefix_relative_bias(self.relative_bias, call, self.params.length)
        call.prepend_kv(key, value, bias)


def _prefix_relative_bias(source: nn.Module, call, m: int) -> torch.Tensor:
    """T5's bias for the prefix columns, the prefix standing at positions 0..m-1 before the real tokens."""
    device = call.query.device
    queries = torch.arange(call.q_length, device=device)[:, None] + call.past_length + m
    relative = torch.arange(m, device=device)[None, :] - queries
    buckets = source._relative_position_bucket(relative, bidirectional=not source.is_decoder,
                                               num_buckets=source.relative_attention_num_buckets,
                                               max_distance=source.relative_attention_max_distance)
    return source.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


def relative_bias_source(target, site) -> nn.Module | None:
    """The module holding T5's relative attention bias for the stack of `site` (its first layer's)."""
    first = target.sites("attn", LayerSelection(layers=(0,)), (site.stack,))[0]
    module = target.module(first.path)
    return module if getattr(module, "has_relative_attention_bias", False) else None


def build_prefix(target, *, prefix_length, flat, mlp_hidden, stacks, shift_positions, layers, encoder_layers,
                 decoder_layers, leave_out):
    sites = attention.attention_sites(target, stacks, LayerSelection(layers, encoder_layers, decoder_layers,
                                                                     leave_out))
    geometry = {attention.kv_geometry(target.module(s.path)) for s in sites}
    check(len(geometry) == 1, f"PrefixTuning needs one key/value shape across layers, found {sorted(geometry)}")
    heads, head_dim = geometry.pop()
    params = PrefixParameters(prefix_length, len(sites), heads, head_dim, flat, target.hidden_size, mlp_hidden)
    home = target.home()
    home.prefix = params.to(next(target.model.parameters()).device)
    causal_only = set(target.stacks()) == {"decoder"}
    for layer, site in enumerate(sites):
        bias = relative_bias_source(target, site) if shift_positions else None
        attention.install(target, site, PrefixExtension(params, layer, bias))
    if shift_positions and causal_only:
        target.add_hook(target.model.register_forward_pre_hook, position_shift(target, prefix_length),
                        with_kwargs=True)


def position_shift(target, m: int):
    """Put the real tokens at positions m, m+1, ... (default positions continue from the cache)."""
    def hook(module, args, kwargs):
        if not is_active(target):
            return None
        positions = kwargs.get("position_ids")
        if positions is None:
            inputs = kwargs.get("inputs_embeds")
            inputs = inputs if inputs is not None else kwargs.get("input_ids", args[0] if args else None)
            if inputs is None:
                return None
            past = decoding.past_length(kwargs, inputs.shape[1])
            positions = torch.arange(past, past + inputs.shape[1], device=inputs.device).unsqueeze(0)
        kwargs["position_ids"] = positions + m
        return args, kwargs

    return hook


def _example(model, tmp_dir):
    return PrefixTuning(prefix_length=3, mlp_hidden=8)


register_method("prefix_tuning", PrefixTuning, build_prefix, aliases=("prefix-tuning", "prefix"), example=_example)
