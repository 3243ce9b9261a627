"""The one shared hook into attention: key/value prefixes and score changes, without forked model code.

transformers 5.x computes attention in every supported architecture through a function looked up by
name in `ALL_ATTENTION_FUNCTIONS` (`config._attn_implementation`, "sdpa" by default). `install` switches
the attention modules' configs (journaled) to "peftlab_<original>", a wrapper registered once per process
that, for every call, runs the *active* adapters' extensions installed on that attention module:

    call = AttentionCall(module, query, key, value, attention_mask, kwargs)   # q/k/v: (batch, heads, len, d)
    for ext in active extensions: ext.before(call)     # may replace call.query/key/value, prepend keys, ...
    output = call.run()                                  # the original implementation on the edited call
    for ext in active extensions: output = ext.after(call, output)
    # output = (attn_output (batch, q_len, heads, d), weights or None), as the original returns it

Prefixes are prepended *after* the model updated its KV cache, so the cache only ever holds real tokens:
cache lengths, masks and positions the model computes stay right in `generate()`, and each step sees the
prefix once per layer. `AttentionCall.prepend_kv` keeps the mask (and T5's position bias) aligned.

API for methods (prefix tuning, inducer-tuning, kernel adapters, MAM, UniPELT):
    sites = attention_sites(target, stacks=("decoder",))          # the self-attention module of each layer
    install(target, site, MyExtension(...))                        # journaled; detach removes it
An extension is an `nn.Module` (its parameters are saved with the adapter, under `home.attention.*`).
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .errors import PeftlabError
from .targeting import LayerSelection, Site

PREFIX = "peftlab_"
_WRAPPABLE = ("sdpa", "eager")
SITE_ATTR = "_peftlab_attention"   # the AttentionSite of a module with extensions


class AttentionCall:
    """One attention call, open for editing by extensions before the original function runs."""

    def __init__(self, module: nn.Module, query, key, value, attention_mask, kwargs: dict, original: Callable):
        self.module, self.query, self.key, self.value = module, query, key, value
        self.attention_mask, self.kwargs, self.original = attention_mask, dict(kwargs), original
        self.real_kv_length = key.shape[2]   # keys from the model (cache included), before any prefix

    @property
    def q_length(self) -> int:
        return self.query.shape[2]

    @property
    def past_length(self) -> int:
        """Position of the first query among the real keys (cached tokens before it)."""
        return self.real_kv_length - self.q_length

    @property
    def causal(self) -> bool:
        flag = self.kwargs.get("is_causal")
        return bool(getattr(self.module, "is_causal", False) if flag is None else flag)

    def prepend_kv(self, key_prefix: torch.Tensor, value_prefix: torch.Tensor,
                   bias: torch.Tensor | None = None) -> None:
        """Prepend keys/values (batch or 1, kv_heads, m, head_dim) that every query may attend to.

        `bias` (broadcastable to (batch, heads, q_len, m)) is the position bias for the new columns on
        models that add one (T5); zeros when omitted."""
        batch, m = self.key.shape[0], key_prefix.shape[2]
        key_prefix = key_prefix.to(self.key.dtype).expand(batch, -1, -1, -1)
        value_prefix = value_prefix.to(self.value.dtype).expand(batch, -1, -1, -1)
        self.attention_mask = _prepend_mask(self._materialized_mask(), m)
        position_bias = self.kwargs.get("position_bias")
        if position_bias is not None:
            shape = (position_bias.shape[0], position_bias.shape[1], position_bias.shape[2], m)
            extra = position_bias.new_zeros(shape) if bias is None else bias.to(position_bias.dtype).expand(shape)
            self.kwargs["position_bias"] = torch.cat([extra, position_bias], dim=-1)
        self.key = torch.cat([key_prefix, self.key], dim=2)
        self.value = torch.cat([value_prefix, self.value], dim=2)

    def _materialized_mask(self) -> torch.Tensor:
        """The mask as a tensor: models pass None when sdpa's `is_causal` (or nothing) would do, but once
        keys are prepended causality must be spelled out (sdpa would otherwise crop the keys)."""
        if self.attention_mask is not None:
            return self.attention_mask
        q, kv = self.q_length, self.key.shape[2]
        if not self.causal:
            return torch.ones(1, 1, q, kv, dtype=torch.bool, device=self.key.device)
        rows = torch.arange(q, device=self.key.device)[:, None] + (kv - q)
        return (torch.arange(kv, device=self.key.device)[None, :] <= rows).view(1, 1, q, kv)

    def run(self):
        return self.original(self.module, self.query, self.key, self.value, self.attention_mask, **self.kwargs)


def _prepend_mask(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Prepend m 'attend' columns: True for a boolean mask, 0 for an additive float mask."""
    shape = (*mask.shape[:-1], m)
    if mask.dtype == torch.bool:
        extra = torch.ones(shape, dtype=torch.bool, device=mask.device)
    else:
        extra = torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([extra, mask], dim=-1)


class AttentionExtension(nn.Module):
    """Base of what a method installs on an attention module. Override `before` and/or `after`.

    Both run inside the model's forward: they must not change learned state."""

    def before(self, call: AttentionCall) -> None:
        """Edit `call` (query, key, value, attention_mask, kwargs) before attention runs."""

    def after(self, call: AttentionCall, output):
        """Return the (possibly changed) output tuple `(attn_output, weights)`."""
        return output


class AttentionSite:
    """What sits on one attention module: adapter name -> extension. It reads the model's active setup
    (the Controller's `Activation`) to run only the active adapters' extensions."""

    def __init__(self, activation):
        self.activation = activation
        self.extensions: dict[str, AttentionExtension] = {}

    def active(self) -> list[AttentionExtension]:
        return [self.extensions[n] for n in self.activation.names if n in self.extensions]


def _original_function(module: nn.Module, implementation: str) -> Callable:
    if implementation == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise PeftlabError(f"{type(module).__name__}: no eager attention function found in its module")
        return eager
    return ALL_ATTENTION_FUNCTIONS[implementation]


def _make_wrapper(implementation: str) -> Callable:
    def peftlab_attention(module, query, key, value, attention_mask, **kwargs):
        original = _original_function(module, implementation)
        site = module.__dict__.get(SITE_ATTR)
        extensions = site.active() if site is not None else []
        if not extensions:
            return original(module, query, key, value, attention_mask, **kwargs)
        call = AttentionCall(module, query, key, value, attention_mask, kwargs, original)
        for extension in extensions:
            extension.before(call)
        output = call.run()
        for extension in extensions:
            output = extension.after(call, output)
        return output

    return peftlab_attention


def _register(implementation: str) -> str:
    """Register the wrapper (and the original's mask function) under "peftlab_<implementation>"."""
    name = PREFIX + implementation
    if name not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        ALL_ATTENTION_FUNCTIONS.register(name, _make_wrapper(implementation))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[implementation])
    return name


def _switch_config(target, config) -> None:
    """Point one config at the wrapper while this adapter needs it (the Controller counts the users)."""
    current = config._attn_implementation or "sdpa"
    if current.startswith(PREFIX):
        current = current[len(PREFIX):]
    if current not in _WRAPPABLE:
        raise PeftlabError(f"attention implementation '{current}' cannot take prefixes or score changes; "
                           f"load the model with attn_implementation='sdpa' or 'eager'")
    target.controller.switch_config(config, _register(current), target.journal)


def _configs_to_switch(target, module: nn.Module) -> list:
    """The model's config and the attention module's own (T5's stacks hold copies of the config)."""
    configs = [target.hf_config]
    own = getattr(module, "config", None)
    if own is not None and all(own is not c for c in configs):
        configs.append(own)
    return configs


def install(target, site: Site, extension: AttentionExtension) -> AttentionExtension:
    """Install `extension` for adapter `target.name` on the attention module at `site` (journaled)."""
    module = target.module(site.path)
    for config in _configs_to_switch(target, module):
        _switch_config(target, config)
    hooks = module.__dict__.get(SITE_ATTR)
    if hooks is None:
        hooks = module.__dict__[SITE_ATTR] = AttentionSite(target.controller.activation)

    def remove_if_unused():   # whichever adapter leaves last takes the site away
        if not hooks.extensions and module.__dict__.get(SITE_ATTR) is hooks:
            del module.__dict__[SITE_ATTR]

    target.journal.record(remove_if_unused)
    if target.name in hooks.extensions:
        raise PeftlabError(f"adapter '{target.name}' already changes attention at {site.path}")
    weight = next(iter(module.parameters()), None)
    if weight is not None:
        extension.to(device=weight.device)
    home = target.home()
    if not hasattr(home, "attention"):
        home.attention = nn.ModuleDict()
    home.attention[site.path.replace(".", "-")] = extension
    hooks.extensions[target.name] = extension
    target.journal.record(lambda: hooks.extensions.pop(target.name, None))
    target.note("attention layers", site.path)
    return extension


def kv_geometry(module: nn.Module) -> tuple[int, int]:
    """(key/value heads, head size) of an attention module, read from its key projection's width."""
    head_dim = next((getattr(module, a) for a in ("head_dim", "key_value_proj_dim", "attention_head_size")
                     if isinstance(getattr(module, a, None), int)), None)
    if head_dim is None:
        raise PeftlabError(f"{type(module).__name__}: cannot tell its head size")
    for name in ("k", "k_proj", "key"):
        proj = getattr(module, name, None)
        if proj is not None:
            return proj.weight.shape[0] // head_dim, head_dim
    fused = getattr(module, "c_attn", None)   # GPT-2: one Conv1D (in, 3 * width) for q, k, v
    if fused is not None:
        return fused.weight.shape[1] // 3 // head_dim, head_dim
    raise PeftlabError(f"{type(module).__name__}: cannot find its key projection")


def attention_sites(target, stacks=None, selection: LayerSelection = LayerSelection()) -> list[Site]:
    """The self-attention module of every selected layer (in `stacks`, default all)."""
    return target.sites("attn", selection, stacks)
