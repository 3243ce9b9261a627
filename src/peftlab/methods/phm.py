"""Parameterized hypercomplex (PHM) layers and the adapters built from them (Mahabadi et al., Compacter).

A PHM layer computes y = x W + b with W = sum_{i=1..n} A_i ⊗ B_i: n "rules" A_i (n x n) and n blocks
B_i ((in/n) x (out/n)). W is built once per forward from these few parameters (one einsum), then used
like an ordinary weight, so the per-token cost is that of a normal linear layer.

Options (DESIGN §3): `phm_dim` n; `shared_phm_rule` (ONE rule tensor for the whole model, kept in the
adapter's home module, so it is saved once and its gradient sums over every layer); `factorized_phm_rule`
(A_i = a_i b_iᵀ); `factorized_phm_W` (B_i = s_i t_iᵀ of rank `phm_rank`); `shared_W_phm` (one set of
blocks per layer shape for the whole model); `learn_phm` (train the rules or keep them fixed);
`phm_c_init`, `phm_init_range` and `hypercomplex_nonlinearity` (initialization, as the Compacter code
does it, docs/fidelity.md rows C1-C2: per-layer rules N(0, 0.01²) or U(±0.01) whatever the range; a shared
rule N(0, phm_init_range²) (1e-4 when unset) or U(-1, 1); blocks glorot-uniform / glorot-normal with gain
√2 per block, or "normal": N(0, phm_init_range²) per layer, N(0, 0.01²) when shared).
`compat="compacter"` also trains a shared rule when `learn_phm` is false, as that code does.
`compat="adapterhub"` builds AdapterHub's PHM layers (adapters 1.3, methods/modeling.py:587-860) inside
AdapterHub's bottleneck (bottleneck_adapterhub.py): `phm_bias`, every block drawn xavier-normal with gain 1
whatever `hypercomplex_nonlinearity` says, every rule trained, shared blocks per position (down, up);
`pl.adapterhub.Compacter` / `.CompacterPlusPlus` are its presets (docs/fidelity.md H12-H13).

Methods: PHMAdapter (Houlsby placement, n = 12, per-layer rules), Compacter (Houlsby placement, n = 4,
shared rule, factorized blocks of rank 1), CompacterPlusPlus (Compacter after the FFN only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import check
from ..errors import PeftlabError
from ..ops.phm import kronecker_sums, low_rank_product
from ..registry import register_method
from .bottleneck import Bottleneck, NonLinearity, AdapterHubPreset, build_bottleneck
from .phm_bank import PHMBank

WeightInit = Literal["glorot-uniform", "glorot-normal", "normal"]
SHARED_RULE_RANGE, LAYER_RULE_RANGE = 1e-4, 1e-2
GLOROT_GAIN = math.sqrt(2.0)   # hypercomplex/inits.py:7,10 of the Compacter code: xavier with gain √2
XAVIER_NORMAL = "xavier-normal-gain-1"     # AdapterHub's block init (not a config value)


@dataclass
class PHMAdapter(Bottleneck):
    """Bottleneck adapter whose down/up projections are PHM layers (Houlsby placement)."""

    reduction_factor: float = 32.0
    non_linearity: NonLinearity = "swish"
    mh_adapter: bool = True
    output_adapter: bool = True
    phm_dim: int = 12
    shared_phm_rule: bool = False
    factorized_phm_rule: bool = False
    factorized_phm_W: bool = False
    phm_rank: int = 1
    shared_W_phm: bool = False
    learn_phm: bool = True
    phm_c_init: Literal["normal", "uniform"] = "normal"
    phm_init_range: float | None = None     # the shared rule's std (None: 1e-4); "normal" blocks' std (None: 0.01)
    hypercomplex_nonlinearity: WeightInit = "glorot-uniform"
    phm_bias: bool = True
    compat_choices = ("compacter", "adapterhub")

    def validate(self):
        super().validate()
        name = type(self).__name__
        check(self.phm_dim >= 1, f"{name}.phm_dim must be >= 1, got {self.phm_dim}")
        check(self.phm_rank >= 1, f"{name}.phm_rank must be >= 1, got {self.phm_rank}")
        check(self.phm_init_range is None or 0 < self.phm_init_range <= 1,
              f"{name}.phm_init_range must be in (0, 1] (a standard deviation of the rules), got {self.phm_init_range}")
        # AdapterHub's default "bert" init touches only nn.Linear layers: none in a PHM adapter
        inits = ("near_identity", "bert") if self.compat == "adapterhub" else ("near_identity",)
        check(self.init in inits, f"{name}.init {self.init!r} is not supported: PHM layers initialize "
                                  f"themselves (hypercomplex_nonlinearity, phm_c_init)")
        check(self.compat != "adapterhub" or not self.shared_W_phm or self.factorized_phm_W,
              f"{name}.shared_W_phm with factorized_phm_W=False: AdapterHub fails to build it "
              f"(methods/modeling.py:781, a name used before it is set); factorize the blocks")


@dataclass
class AdapterHubCompacter(AdapterHubPreset, PHMAdapter):
    """AdapterHub's `CompacterConfig`: its DoubleSeqBn (after attention and after the FFN) with PHM
    projections, gelu, reduction factor 32, n = 4, a shared rule N(0, 1e-4²), factorized blocks of rank 1."""

    non_linearity: NonLinearity = "gelu"
    phm_dim: int = 4
    shared_phm_rule: bool = True
    factorized_phm_W: bool = True
    phm_init_range: float | None = 1e-4
    init: Literal["near_identity", "bert", "zero_up"] = "bert"
    compat: str | None = "adapterhub"


@dataclass
class AdapterHubCompacterPlusPlus(AdapterHubCompacter):
    """AdapterHub's `CompacterPlusPlusConfig`: its SeqBn (after the FFN, reading the sublayer's output plus
    the residual, through the model's LayerNorm on post-norm models) with the same PHM projections."""

    mh_adapter: bool = False
    original_ln_before: bool = True


@dataclass
class Compacter(PHMAdapter):
    phm_dim: int = 4
    shared_phm_rule: bool = True
    factorized_phm_W: bool = True


@dataclass
class CompacterPlusPlus(Compacter):
    mh_adapter: bool = False
    output_adapter: bool = True


# --- modules ---------------------------------------------------------------------------------------

def _init_rule(tensor: torch.Tensor, c_init: str, init_range: float) -> None:
    """N(0, range²) or U(±range); a shared rule's uniform init is U(-1, 1) (its `init_range` is 1)."""
    if c_init == "uniform":
        nn.init.uniform_(tensor, -init_range, init_range)
    else:
        nn.init.normal_(tensor, std=init_range)


class PHMRule(nn.Module):
    """The n rules A (n, n, n), or their rank-1 factors a (n, n, 1) and b (n, 1, n)."""

    def __init__(self, n: int, factorized: bool, learn: bool, c_init: str, init_range: float):
        super().__init__()
        self.factorized = factorized
        if factorized:
            self.phm_rule_left = nn.Parameter(torch.empty(n, n, 1), requires_grad=learn)
            self.phm_rule_right = nn.Parameter(torch.empty(n, 1, n), requires_grad=learn)
            tensors = (self.phm_rule_left, self.phm_rule_right)
        else:
            self.phm_rule = nn.Parameter(torch.empty(n, n, n), requires_grad=learn)
            tensors = (self.phm_rule,)
        with torch.no_grad():
            for tensor in tensors:
                _init_rule(tensor, c_init, init_range)

    def value(self) -> torch.Tensor:
        if self.factorized:
            return low_rank_product(self.phm_rule_left, self.phm_rule_right)
        return self.phm_rule

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.phm_rule_left, self.phm_rule_right) if self.factorized else (self.phm_rule,)


def glorot_(tensor: torch.Tensor, how: str) -> None:
    """Glorot with gain √2 on each 2-D slice of `tensor` (fans: the slice's own sizes), as the Compacter
    code initializes PHM blocks and low-rank factors; XAVIER_NORMAL: gain 1 (AdapterHub's)."""
    fan_in, fan_out = tensor.shape[-2:]
    if how == XAVIER_NORMAL:
        nn.init.normal_(tensor, std=math.sqrt(2.0 / (fan_in + fan_out)))
    elif how == "glorot-uniform":
        bound = GLOROT_GAIN * math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(tensor, -bound, bound)
    else:
        nn.init.normal_(tensor, std=GLOROT_GAIN * math.sqrt(2.0 / (fan_in + fan_out)))


def _init_block(tensor: torch.Tensor, how: str, init_range: float) -> None:
    """Glorot (gain √2) per block B_i, or N(0, init_range²)."""
    if how == "normal":
        nn.init.normal_(tensor, std=init_range)
    else:
        glorot_(tensor, how)


class PHMBlocks(nn.Module):
    """The n blocks B (n, p, q), or factors s (n, p, r) and t (n, r, q) with B_i = s_i t_iᵀ."""

    def __init__(self, n: int, p: int, q: int, factorized: bool, rank: int, how: str, init_range: float):
        super().__init__()
        self.factorized = factorized
        if factorized:
            self.W_left = nn.Parameter(torch.empty(n, p, rank))
            self.W_right = nn.Parameter(torch.empty(n, rank, q))
            tensors = (self.W_left, self.W_right)
        else:
            self.W = nn.Parameter(torch.empty(n, p, q))
            tensors = (self.W,)
        with torch.no_grad():
            for tensor in tensors:
                _init_block(tensor, how, init_range)

    def value(self) -> torch.Tensor:
        return low_rank_product(self.W_left, self.W_right) if self.factorized else self.W

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.W_left, self.W_right) if self.factorized else (self.W,)


class PHMLinear(nn.Module):
    """y = x W + b with W = kronecker_sum(rule, blocks) (in x out), built once per forward by its `bank`
    together with the weights of every PHM layer of the same shape in the attachment.

    A shared rule or shared blocks are referenced, not registered here: their one home is the
    adapter's home module, so they are saved once and `.parameters()` of a layer lists only its own."""

    def __init__(self, in_features: int, out_features: int, rule: PHMRule, blocks: PHMBlocks,
                 shared_rule: bool, shared_blocks: bool, bank: "PHMBank | None" = None, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._attach("rule", rule, shared_rule)
        self._attach("blocks", blocks, shared_blocks)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.bank = bank or PHMBank()
        self.bank.add(self)

    def _attach(self, attr: str, module: nn.Module, shared: bool) -> None:
        if shared:
            self.__dict__[attr] = module     # a plain reference; the home module owns the tensors
        else:
            setattr(self, attr, module)

    def phm_weight(self) -> torch.Tensor:
        return self.bank.weight(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = flat @ self.phm_weight() if self.bias is None else torch.addmm(self.bias, flat, self.phm_weight())
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n={self.rule.value().shape[0]}"


# --- building ---------------------------------------------------------------------------------------

_PHM_FIELDS = ("phm_dim", "shared_phm_rule", "factorized_phm_rule", "factorized_phm_W", "phm_rank", "shared_W_phm",
               "learn_phm", "phm_c_init", "phm_init_range", "hypercomplex_nonlinearity", "phm_bias")


class PHMFactory:
    """Builds the PHM layers of one attachment; creates the model-wide shared tensors on first use."""

    adapterhub = True    # AdapterHub's bottleneck (compat="adapterhub") may build its projections with it

    def __init__(self, target, *, phm_dim, shared_phm_rule, factorized_phm_rule, factorized_phm_W, phm_rank,
                 shared_W_phm, learn_phm, phm_c_init, phm_init_range, hypercomplex_nonlinearity, phm_bias, compat):
        self.target, self.n, self.bias, self.compat = target, phm_dim, phm_bias, compat
        self.shared_rule, self.shared_blocks = shared_phm_rule, shared_W_phm
        # AdapterHub's train_adapter trains every rule whatever learn_phm says (model_mixin.py:591-602, and
        # its bottleneck layers unfreeze all of an adapter's tensors)
        self.learn = learn_phm or compat == "adapterhub"
        self.factorized_rule, self.c_init = factorized_phm_rule, phm_c_init
        # Compacter's code trains a shared rule even with learn_phm false (utils/utils.py:78-83)
        self.learn_shared = learn_phm or compat in ("compacter", "adapterhub")
        self.shared_range = phm_init_range or SHARED_RULE_RANGE
        # AdapterHub's init_W tests `if hypercomplex_nonlinearity:`, true for every name, so its blocks are
        # always xavier-normal with gain 1 (modeling.py:822-835)
        how = XAVIER_NORMAL if compat == "adapterhub" else hypercomplex_nonlinearity
        self.block_args = (factorized_phm_W, phm_rank, how)
        self.block_range = phm_init_range or LAYER_RULE_RANGE
        self.placement = target.placement()   # the shared tensors live where the parts do
        self.home = target.home() if shared_phm_rule or shared_W_phm else None
        self.bank = PHMBank()
        target.add_hook(target.model.register_forward_pre_hook, self.bank.clear)
        if shared_phm_rule:
            uniform = phm_c_init == "uniform"   # modeling_t5.py:1543-1557: N(0, range²), or U(-1, 1)
            self.home.phm_rule = PHMRule(self.n, self.factorized_rule, self.learn_shared, phm_c_init,
                                         1.0 if uniform else self.shared_range).to(**self.placement)

    def _layer_rule(self) -> PHMRule:
        """A per-layer rule: N(0, 0.01²) or U(±0.01) whatever phm_init_range is (layers.py:133-149)."""
        return PHMRule(self.n, self.factorized_rule, self.learn, self.c_init, LAYER_RULE_RANGE).to(**self.placement)

    def _blocks(self, p: int, q: int, position: str | None) -> PHMBlocks:
        if not self.shared_blocks:
            return PHMBlocks(self.n, p, q, *self.block_args, self.block_range)
        if not hasattr(self.home, "phm_W"):
            self.home.phm_W = nn.ModuleDict()
        # AdapterHub shares one set for the down and one for the up projections (modeling.py:760-790)
        key = position if self.compat == "adapterhub" and position else f"{p}x{q}"
        if key not in self.home.phm_W:   # shared "normal" blocks: N(0, 0.01²) (modeling_t5.py:1644-1651)
            self.home.phm_W[key] = PHMBlocks(self.n, p, q, *self.block_args, LAYER_RULE_RANGE).to(**self.placement)
        return self.home.phm_W[key]

    def __call__(self, in_features: int, out_features: int, position: str | None = None) -> PHMLinear:
        """A PHM layer; `position` ("down", "up") names the projection where that matters (AdapterHub)."""
        if in_features % self.n or out_features % self.n:
            raise PeftlabError(f"phm_dim {self.n} does not divide the adapter's layer sizes "
                               f"{in_features} -> {out_features}; pick a phm_dim dividing both "
                               f"(or change reduction_factor)")
        rule = self.home.phm_rule if self.shared_rule else self._layer_rule()
        blocks = self._blocks(in_features // self.n, out_features // self.n, position)
        return PHMLinear(in_features, out_features, rule, blocks, self.shared_rule, self.shared_blocks, self.bank,
                         bias=self.bias)


def build_phm_adapter(target, **kwargs):
    phm = {k: kwargs.pop(k) for k in _PHM_FIELDS}
    # compat="compacter" is the PHM layers' own; "adapterhub" is the bottleneck's as well
    compat = kwargs.pop("compat")
    build_bottleneck(target, **kwargs, linear=PHMFactory(target, **phm, compat=compat),
                     compat=compat if compat == "adapterhub" else None)


def _tiny_example(cls):
    """Tiny contract models have hidden size 16 (k = 4 at reduction factor 4): n = 2 or 4 divides both."""
    def example(model, tmp_dir):
        return cls(reduction_factor=4, phm_dim=2 if cls is PHMAdapter else 4)
    return example


register_method("phm_adapter", PHMAdapter, build_phm_adapter, aliases=("phm-adapter", "phm"),
                example=_tiny_example(PHMAdapter))
register_method("compacter", Compacter, build_phm_adapter, example=_tiny_example(Compacter))
register_method("compacter++", CompacterPlusPlus, build_phm_adapter, aliases=("compacter_plus_plus",),
                example=_tiny_example(CompacterPlusPlus))
register_method("adapterhub_compacter", AdapterHubCompacter, build_phm_adapter, aliases=("ah_compacter",),
                example=_tiny_example(AdapterHubCompacter))
register_method("adapterhub_compacter++", AdapterHubCompacterPlusPlus, build_phm_adapter,
                aliases=("ah_compacter++", "adapterhub_compacter_plus_plus"),
                example=_tiny_example(AdapterHubCompacterPlusPlus))
