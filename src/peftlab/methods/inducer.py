"""Inducer-tuning (Chen et al., EMNLP 2022): a query-dependent "inducer" key/value pair per head.

For each head with query q (as attention sees it: after rotary embeddings, one row per query token):
    k* = q + MLP_k(q)                          the inducer key, close to q
    s0 = q . k* * scaling                      its score (scaling = 1/sqrt(d_h); T5 does not scale)
    w  = softmax([s0, s_1 .. s_n])_0           its share of attention against the real keys' scores s_j
                                               (with the model's mask, and T5's position bias)
    out = Attn(q) + w * MLP_v(q)               Attn keeps its own softmax over the real keys
    out = (1 - w) Attn(q) + w * MLP_v(q)       with `joint_softmax` (one softmax over all n + 1 keys)
where MLP(x) = tanh(x A + a) B + b, per head, rank `rank_k` / `rank_v`, every tensor N(0, 0.01^2)
truncated at 2 sigma (the paper's init). With `prefix_value_extension` (the paper's GPT-2 setting)
MLP_v maps each head straight into the output space after W_o: the sublayer output becomes
W_o out + sum_h w_h tanh(q_h A_h + a_h) B_h + b, with b (one d-vector) added unweighted, as in the
paper's code.

At init the inducer is a small perturbation, not the identity: |w * MLP_v(q)| <= |B| (|tanh| <= 1), and
the bias b adds N(0, 0.01^2) per channel; `tests/test_inducer.py` measures it.

Variants: `lora` puts a LoRA beside it ("inducer-lora"), `parallel_adapter` a parallel FFN adapter
("inducer-mam", with the LoRA). Both reuse those methods' builders through the same `AttachTarget`.
The attention hook is `peftlab.attention`, shared with prefix tuning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import AttentionExtension, attention_sites as attention_modules, install
from ..config import LayeredConfig, check
from ..registry import register_method
from ..runtime import Handoff, Part
from ..targeting import LayerSelection, feature_dims
from .bottleneck import Parallel, build_bottleneck
from .head_geometry import attention_sites as projection_sites, projection_segments, truncated_normal_
from .lora import LoRA, LoRAPart, build_lora, lora_sites


@dataclass
class Inducer(LayeredConfig):
    rank_k: int = 10                      # rank of MLP_k (the paper's GPT-2 "prefix_length")
    rank_v: int = 15                      # rank of MLP_v (the paper's GPT-2 "prefix_dim")
    prefix_value_extension: bool = True   # MLP_v maps into the output space after W_o
    joint_softmax: bool = False           # (1 - w) Attn(q) instead of Attn(q)
    lora: LoRA | None = None              # a LoRA beside the inducer ("inducer-lora")
    parallel_adapter: Parallel | None = None     # a parallel adapter as well ("inducer-mam")
    share_dropout: bool = True            # the attention's own dropout on w too, as kernel-adapters does
    compat_choices = ("kernel-adapters",)

    def validate(self):
        check(self.rank_k > 0, f"{type(self).__name__}.rank_k must be positive, got {self.rank_k}")
        check(self.rank_v > 0, f"{type(self).__name__}.rank_v must be positive, got {self.rank_v}")
        check(self.parallel_adapter is None or self.parallel_adapter.parallel,
              f"{type(self).__name__}.parallel_adapter must have parallel=True")
        check_nested_switches(self, "lora", "parallel_adapter")


def check_nested_switches(owner, *fields: str) -> None:
    """A nested config's generic switches would be ignored: they belong on the owner, where `attach`
    applies them."""
    for name in fields:
        nested = getattr(owner, name)
        for switch in ("unfreeze_layer_norms", "unfreeze_lm_head"):
            check(nested is None or not getattr(nested, switch),
                  f"{type(owner).__name__}.{name}.{switch}: set {switch} on {type(owner).__name__} itself")


def _paper_lora(r: int) -> LoRA:
    """The kernel-adapters GPT-2 configs' LoRA on W_q: α 32, dropout 0.1, with its zero-initialized bias
    scaled by α/r (nlg/adapters/adapter_modeling.py:181-188, low_rank_layer.py:97-98,222-223)."""
    return LoRA(r=r, alpha=32.0, dropout=0.1, slots=("attn.q",), bias=True)


@dataclass
class InducerLoRA(Inducer):
    """The paper's GPT-2 "inducer + LoRA" budget (about 2.0M trainable on GPT-2 small)."""

    rank_k: int = 5
    rank_v: int = 12
    lora: LoRA | None = field(default_factory=lambda: _paper_lora(24))


@dataclass
class InducerMAM(Inducer):
    """The paper's GPT-2 "inducer-MAM": inducer + LoRA on Q + a parallel FFN adapter (reduction 18.2, LN before),
    its weights N(0, 0.02²) as the kernel-adapters code leaves them (its loader re-initializes every module
    missing from the checkpoint: nlg/modeling/custom_modeling_utils.py:1269-1288, custom_gpt2.py:677-691)."""

    rank_k: int = 3
    rank_v: int = 7
    lora: LoRA | None = field(default_factory=lambda: _paper_lora(16))
    parallel_adapter: Parallel | None = field(default_factory=lambda: Parallel(
        reduction_factor=18.2, non_linearity="relu", adapter_layernorm_before=True, scaling=1.0, init="bert"))


def _mlp_tensors(heads: int, head_dim: int, rank: int, out_shape: tuple[int, ...], bias_shape) -> list:
    shapes = [(heads, head_dim, rank), (heads, rank), (heads, rank, *out_shape), bias_shape]
    return [nn.Parameter(truncated_normal_(torch.empty(shape))) for shape in shapes]


class InducerExtension(AttentionExtension):
    """The inducer of one attention module; runs inside the shared attention hook."""

    def __init__(self, heads: int, head_dim: int, d_out: int, rank_k: int, rank_v: int, value_extension: bool,
                 joint_softmax: bool, share_dropout: bool = True, mask_share: bool = True):
        super().__init__()
        # share_dropout: w passes the attention's dropout (custom_gpt2.py:328, modeling_roberta.py:423);
        # mask_share False: w sees padded keys, as kernel-adapters' RoBERTa (modeling_roberta.py:412-427)
        self.share_dropout, self.mask_share = share_dropout, mask_share
        self.key_A, self.key_a, self.key_B, self.key_b = _mlp_tensors(heads, head_dim, rank_k, (head_dim,),
                                                                      (heads, head_dim))
        out = (d_out,) if value_extension else (head_dim,)
        self.value_A, self.value_a, self.value_B, self.value_b = _mlp_tensors(
            heads, head_dim, rank_v, out, (d_out,) if value_extension else (heads, head_dim))
        self.value_extension, self.joint_softmax = value_extension, joint_softmax
        # the output-space term, for the part on W_o
        self.pending = Handoff("Inducer: the output projection ran without its attention call")

    def share(self, call, q: torch.Tensor) -> torch.Tensor:
        """w (batch, heads, q_len): the inducer's share of a softmax over [s0, real scores]."""
        scaling = call.kwargs.get("scaling")
        scaling = q.shape[-1] ** -0.5 if scaling is None else scaling
        mlp_k = torch.tanh(torch.einsum("bhnd,hdr->bhnr", q, self.key_A) + self.key_a[:, None]) @ self.key_B
        s0 = (q * (q + mlp_k + self.key_b[:, None])).sum(-1) * scaling
        keys = call.key.to(q.dtype)
        keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)   # grouped-query attention
        scores = q @ keys.transpose(-1, -2) * scaling
        bias = call.kwargs.get("position_bias")
        if bias is not None:
            scores = scores + bias.to(q.dtype)
        if self.mask_share or call.causal:
            scores = _masked(scores, call)
        return torch.sigmoid(s0 - torch.logsumexp(scores, dim=-1))

    def after(self, call, output):
        attn = output[0]
        q = call.query.to(self.key_A.dtype)
        w = self.share(call, q)                                            # (b, h, n)
        base = attn * (1 - w.transpose(1, 2)[..., None]).to(attn.dtype) if self.joint_softmax else attn
        p = float(call.kwargs.get("dropout") or 0.0)   # the attention's dropout in training, 0 in eval
        if self.share_dropout and p > 0:
            w = F.dropout(w, p=p, training=True)
        hidden = torch.tanh(torch.einsum("bhnd,hdr->bhnr", q, self.value_A) + self.value_a[:, None])
        weight = w.transpose(1, 2)[..., None]                              # (b, n, h, 1)
        if self.value_extension:
            weighted = hidden * w[..., None]
            self.pending.put(torch.einsum("bhnr,hro->bno", weighted, self.value_B) + self.value_b)
            return (base, *output[1:])
        values = (hidden @ self.value_B + self.value_b[:, None]).transpose(1, 2)   # (b, n, h, d)
        return (base + (weight * values).to(attn.dtype), *output[1:])


def _masked(scores: torch.Tensor, call) -> torch.Tensor:
    """Scores with the call's mask applied (boolean: True attends; float: additive); None means
    causal or nothing, as sdpa reads it."""
    mask = call.attention_mask
    if mask is None:
        if not call.causal or call.q_length == 1:
            return scores
        q, kv = scores.shape[-2], scores.shape[-1]
        rows = torch.arange(q, device=scores.device)[:, None] + (kv - q)
        mask = torch.arange(kv, device=scores.device)[None, :] <= rows
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.to(scores.dtype)


class InducerOutputPart(Part):
    """Adds the inducer's output-space term after W_o (prefix_value_extension)."""

    role = "add"

    def __init__(self, extension: InducerExtension):
        super().__init__()
        self.__dict__["extension"] = extension   # a plain reference: the weights live in the extension

    def forward(self, x):
        return self.extension.pending.take().to(x.dtype)


class SliceLoRA(Part):
    """LoRA on the query (or key, value) slice of a fused q/k/v projection (GPT-2's c_attn): the core's
    LoRA on slot attn.q adapts the whole fused output, which is not the papers' "LoRA on W_q"."""

    role = "add"

    def __init__(self, segment, lora: LoRAPart, out_features: int):
        super().__init__()
        self.segment, self.lora, self.out_features = segment, lora, out_features

    def forward(self, x):
        delta = self.lora(x)
        before = self.segment.start
        after = self.out_features - before - self.segment.width
        pads = [delta.new_zeros(*delta.shape[:-1], n) for n in (before, after)]
        return torch.cat([pads[0], delta, pads[1]], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        delta = self.lora.delta_weight()
        full = delta.new_zeros(self.out_features, delta.shape[1])
        full[self.segment.start:self.segment.start + self.segment.width] = delta
        return full

    def delta_bias(self) -> torch.Tensor | None:
        delta = self.lora.delta_bias()
        if delta is None:
            return None
        full = delta.new_zeros(self.out_features)
        full[self.segment.start:self.segment.start + self.segment.width] = delta
        return full


_PROJECTIONS = ("attn.q", "attn.k", "attn.v")


def build_side_lora(target, lora: LoRA, wrap=None) -> None:
    """Attach `lora` through the same target; on a fused q/k/v projection only the named slices.

    `wrap(part, in_features)` may wrap each LoRA part (UniPELT's gates); without it, and without a
    fused projection, this is exactly the LoRA method's own builder."""
    fused = target.layout.attention.get("fused_qkv") and not lora.target_modules
    if wrap is None and not (fused and any(s in _PROJECTIONS for s in lora.slots)):
        build_lora(target, **lora.build_kwargs())
        return
    wrap = wrap or (lambda part, d_in: part)
    selection = LayerSelection(lora.layers, lora.encoder_layers, lora.decoder_layers, lora.leave_out)
    plain = tuple(s for s in lora.slots if not (fused and s in _PROJECTIONS))
    if lora.target_modules or plain:
        for site in lora_sites(target, plain, lora.target_modules, selection):
            dims = feature_dims(target.module(site.path))
            check(dims is not None, f"LoRA cannot wrap {site.path}: it is not a linear projection")
            target.place(site, wrap(LoRAPart(dims[0], dims[1], lora.r, lora.alpha, lora.dropout, lora.bias), dims[0]))
    kinds = "".join(slot[-1] for slot in lora.slots if fused and slot in _PROJECTIONS)
    for site in target.sites("attn.qkv", selection) if kinds else ():
        d_in, d_out = feature_dims(target.module(site.path))
        for segment in projection_segments(target, site, kinds, "LoRA").values():
            part = LoRAPart(d_in, segment.width, lora.r, lora.alpha, lora.dropout, lora.bias)
            target.place(site, wrap(SliceLoRA(segment, part, d_out), d_in))


def _by_layer(sites) -> dict:
    return {(site.stack, site.layer): site for site in sites}


def build_inducer(target, *, rank_k, rank_v, prefix_value_extension, joint_softmax, lora, parallel_adapter,
                  share_dropout, compat, layers, encoder_layers, decoder_layers, leave_out):
    selection = LayerSelection(layers, encoder_layers, decoder_layers, leave_out)
    queries = _by_layer(projection_sites(target, "q", selection))
    outputs = _by_layer(target.sites("attn.o", selection))
    for site in attention_modules(target, selection=selection):
        key = (site.stack, site.layer)
        segment = projection_segments(target, queries[key], "q", "Inducer")["q"]
        d_out = feature_dims(target.module(outputs[key].path))[1]
        extension = InducerExtension(segment.heads, segment.head_dim, d_out, rank_k, rank_v,
                                     prefix_value_extension, joint_softmax, share_dropout,
                                     mask_share=compat != "kernel-adapters")
        install(target, site, extension)
        if prefix_value_extension:
            target.place(outputs[key], InducerOutputPart(extension))
    if lora is not None:
        build_side_lora(target, lora)
    if parallel_adapter is not None:
        build_bottleneck(target, **parallel_adapter.build_kwargs())


def _example(cls):
    def example(model, tmp_dir):
        arch = model.config.model_type
        small = {"lora": LoRA(r=2, alpha=4.0, slots=("attn.q",))} if cls is not Inducer else {}
        if cls is InducerMAM:
            small["parallel_adapter"] = Parallel(bottleneck_size=3, adapter_layernorm_before=True, scaling=1.0)
        return cls(rank_k=2, rank_v=3, joint_softmax=arch in ("t5", "llama"),
                   prefix_value_extension=arch != "bert", **small)
    return example


register_method("inducer", Inducer, build_inducer, aliases=("inducer-tuning",), example=_example(Inducer))
register_method("inducer_lora", InducerLoRA, build_inducer, aliases=("inducer-lora",), example=_example(InducerLoRA))
register_method("inducer_mam", InducerMAM, build_inducer, aliases=("inducer-mam",), example=_example(InducerMAM))
