"""Intrinsic SAID / DID (Aghajanyan et al. 2021): train a few numbers in a random subspace.

Every base parameter tensor i becomes θ_i = θ_i⁰ + λ_i · P_i(z). z (starting at 0) is the only trained
vector for DID; SAID also trains one scalar λ_i per tensor (starting at 1) and gives z d' − m entries so
that exactly d' = `intrinsic_dim` numbers train. P_i is a Fastfood transform (`ops/fastfood.py`) or, for
small models and tests, a fixed dense Gaussian matrix with N(0, 1/D_i) entries (also norm-preserving).

How θ reaches the forward without swapping classes or parametrizations: a forward pre-hook on the model
(and on its encoder, which `generate()` calls on its own) computes every delta in one batched pass and
puts θ_i into the owning modules' `_parameters` slots; a forward hook with `always_call=True` puts the
original Parameter objects back, even when the forward raises. Values of θ⁰ are never written, so detach
is exact, and θ⁰ is never part of the adapter's state: only z and λ are saved; the random pieces are
non-persistent buffers regenerated from `seed`. Nested calls (the encoder inside the model) substitute
once. Not compatible with gradient checkpointing, which re-runs layers after the forward has returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import MethodConfig, check
from ..errors import PeftlabError
from ..ops.fastfood import Workspace, draw_pieces, fastfood_rows, next_power_of_two, row_offsets, scale_gradient
from ..registry import register_method
from ..runtime import named_base_modules

DENSE_LIMIT = 1 << 27   # entries of a dense projection matrix (512 MiB in float32): beyond, use fastfood


@dataclass
class IntrinsicSAID(MethodConfig):
    intrinsic_dim: int = 20000
    said: bool = True
    projection: Literal["fastfood", "dense"] = "fastfood"
    seed: int = 0
    compat_choices = ("compacter",)

    def validate(self):
        name = type(self).__name__
        check(self.intrinsic_dim >= 1, f"{name}.intrinsic_dim must be >= 1, got {self.intrinsic_dim}")
        check(self.seed >= 0, f"{name}.seed must be >= 0, got {self.seed}")

    @property
    def identity_at_init(self) -> bool:
        return True    # z = 0, so every delta is exactly 0


@dataclass
class IntrinsicDID(IntrinsicSAID):
    """Direct intrinsic dimension: no per-tensor scalars, z has all d' entries."""

    said: bool = False


# --- the projection ---------------------------------------------------------------------------------

class _Group:
    """Targets sharing one padded length L: their rows go through one batched transform."""

    def __init__(self, length: int, members: list[int]):
        self.length, self.members = length, members


class IntrinsicProjector(nn.Module):
    """Holds z (and λ), the random pieces, and computes the flat deltas λ_i P_i(z) of every tensor.

    `compacter=True` reproduces the Compacter code (docs/fidelity.md C5-C8): z's gradient through each
    tensor's transforms scaled by 1/L (its FWHT backward returns H·g/√L), one λ more than tensors (the last
    one unused) and one z entry fewer, and a dense projection of N(0, 0.01²) entries, unnormalized."""

    def __init__(self, sizes: list[int], intrinsic_dim: int, said: bool, projection: str, seed: int,
                 device: torch.device, compacter: bool = False):
        super().__init__()
        self.sizes, self.projection, self.compacter = list(sizes), projection, compacter
        lambdas = len(sizes) + (1 if compacter else 0)   # intrinsic.py:155-170: the projector itself counted
        z_length = intrinsic_dim - lambdas if said else intrinsic_dim
        self.z = nn.Parameter(torch.zeros(z_length, device=device))
        self.said_lambda = nn.Parameter(torch.ones(lambdas, device=device)) if said else None
        generator = torch.Generator().manual_seed(seed)
        meta = device.type == "meta"
        if projection == "dense":
            self._make_dense(z_length, generator, device, meta)
        else:
            self._make_fastfood(z_length, generator, device, meta)

    def _make_dense(self, z_length, generator, device, meta):
        total = sum(self.sizes)
        if total * z_length > DENSE_LIMIT:
            raise PeftlabError(f"projection 'dense' needs a {total:,} x {z_length:,} matrix for this model, "
                               f"over the limit of {DENSE_LIMIT:,} entries (512 MiB): use projection "
                               f"'fastfood', or a model of at most {DENSE_LIMIT // z_length:,} parameters")
        if meta:
            matrix = torch.empty(total, z_length, device=device)
        else:
            scale = torch.cat([torch.full((size,), 0.01 if self.compacter else size ** -0.5) for size in self.sizes])
            matrix = (torch.randn(total, z_length, generator=generator) * scale[:, None]).to(device)
        self.register_buffer("dense", matrix, persistent=False)

    def _make_fastfood(self, z_length, generator, device, meta):
        by_length: dict[int, list[int]] = {}
        for i, size in enumerate(self.sizes):
            by_length.setdefault(next_power_of_two(size), []).append(i)
        self.groups = [_Group(length, members) for length, members in sorted(by_length.items())]
        self.workspaces = [Workspace() for _ in self.groups]     # reused by the forward hook's deltas
        # drawn group by group (a fixed order, so the seed reproduces them) to keep the peak memory
        # at one group's pieces on top of the stacked buffers
        for g, group in enumerate(self.groups):
            tensors = self._group_pieces(group, z_length, generator, meta)
            for name, tensor in zip(("signs", "index", "gauss", "scale"), tensors):
                self.register_buffer(f"ff{g}_{name}", tensor.to(device), persistent=False)

    def _group_pieces(self, group: _Group, z_length: int, generator, meta: bool) -> tuple[torch.Tensor, ...]:
        rows, length = len(group.members), group.length
        if meta:
            short = min(length, next_power_of_two(z_length))
            def empty(*shape, dtype=torch.float32):
                return torch.empty(shape, dtype=dtype, device="meta")
            return empty(rows, short), empty(rows, length, dtype=torch.int32), empty(rows, length), empty(rows)
        chosen = [draw_pieces(self.sizes[i], z_length, generator) for i in group.members]
        short = chosen[0].signs.shape[0]
        return (torch.stack([p.signs for p in chosen]), row_offsets(torch.stack([p.index for p in chosen]), short),
                torch.stack([p.gauss for p in chosen]), torch.tensor([p.scale for p in chosen]))

    def _lambdas(self, members: list[int] | None = None) -> torch.Tensor | None:
        if self.said_lambda is None:
            return None
        return self.said_lambda[:len(self.sizes)] if members is None else self.said_lambda[members]

    def deltas(self, scratch: bool = False) -> list[torch.Tensor]:
        """Flat λ_i P_i(z) for every tensor, in the order of `sizes`. `scratch`: compute in reused buffers;
        the results are then valid only until the next scratch call (for a caller that consumes them)."""
        if self.projection == "dense":
            flat = self.dense @ self.z
            out = list(flat.split(self.sizes))
            lam = self._lambdas()
            return out if lam is None else [d * lam[i] for i, d in enumerate(out)]
        out: list[torch.Tensor | None] = [None] * len(self.sizes)
        for g, group in enumerate(self.groups):
            scale = getattr(self, f"ff{g}_scale")
            lam = self._lambdas(group.members)
            z = scale_gradient(self.z, 1.0 / group.length) if self.compacter else self.z
            rows = fastfood_rows(z, getattr(self, f"ff{g}_signs"), getattr(self, f"ff{g}_index"),
                                 getattr(self, f"ff{g}_gauss"), scale if lam is None else scale * lam,
                                 [self.sizes[i] for i in group.members], self.workspaces[g] if scratch else None)
            for row, i in zip(rows, group.members):
                out[i] = row
        return out


# --- putting θ into the forward -----------------------------------------------------------------------

class Substitution:
    """Forward hooks that swap θ⁰ + δ into the modules for the duration of one (outer) forward."""

    def __init__(self, activation, name: str, projector: IntrinsicProjector,
                 tensors: list[nn.Parameter], places: list[list[tuple[nn.Module, str]]]):
        self.activation, self.name, self.projector = activation, name, projector
        self.tensors, self.places = tensors, places
        self.depth = 0

    def _active(self) -> bool:
        return self.name in self.activation.names   # the active setup may be a composition block

    def before(self, module, args):
        self.depth += 1
        if self.depth == 1 and self._active():
            if module.training and _checkpointing(module):
                raise PeftlabError("IntrinsicSAID cannot train with activation (gradient) checkpointing: the "
                                   "re-run layers would see θ⁰ instead of θ⁰ + λP(z); disable it")
            self._apply()

    def after(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            self._restore()

    def _apply(self) -> None:
        deltas = self.projector.deltas(scratch=True)   # consumed right here
        new = []   # compute everything first, so a failure leaves the model untouched
        for tensor, delta, places in zip(self.tensors, deltas, self.places):
            module, attr = places[0]
            current = module._parameters[attr]   # θ⁰, or θ⁰ + another active adapter's delta
            new.append(current + delta.view(tensor.shape).to(device=current.device, dtype=current.dtype))
        for value, places in zip(new, self.places):
            for module, attr in places:
                module._parameters[attr] = value

    def _restore(self) -> None:
        for tensor, places in zip(self.tensors, self.places):
            for module, attr in places:
                module._parameters[attr] = tensor


def _checkpointing(module: nn.Module) -> bool:
    """transformers 5 renamed `is_gradient_checkpointing` (now deprecated) to `is_activation_checkpointing`."""
    flag = getattr(module, "is_activation_checkpointing", None)
    if flag is None:
        flag = getattr(module, "is_gradient_checkpointing", False)
    return bool(flag)


def _unique_parameters(model: nn.Module):
    """Each base parameter tensor once (tied weights once), with every (module, attr) that holds it."""
    tensors, places, seen = [], [], {}
    for _, module in named_base_modules(model):
        for attr, param in module._parameters.items():
            if param is None:
                continue
            if id(param) not in seen:
                seen[id(param)] = len(tensors)
                tensors.append(param)
                places.append([])
            places[seen[id(param)]].append((module, attr))
    return tensors, places


def build_intrinsic(target, *, intrinsic_dim, said, projection, seed, compat):
    model = target.model
    tensors, places = _unique_parameters(model)
    if compat == "compacter":   # intrinsic.py:253-254 sets the embedding module only: a tied lm_head keeps θ⁰
        head = target.module(target.layout.lm_head) if target.layout.lm_head and target.exists(
            target.layout.lm_head) else None
        places = [[(m, a) for m, a in where if m is not head] or where for where in places]
    check(bool(tensors), "IntrinsicSAID: the model has no parameters to project")
    if said and intrinsic_dim <= len(tensors):
        raise PeftlabError(f"IntrinsicSAID.intrinsic_dim {intrinsic_dim} must exceed the number of parameter "
                           f"tensors ({len(tensors)}): SAID spends one entry per tensor on its scalar λ")
    device = tensors[0].device
    projector = IntrinsicProjector([t.numel() for t in tensors], intrinsic_dim, said, projection, seed, device,
                                   compacter=compat == "compacter")
    target.home().intrinsic = projector
    for index in range(len(tensors)):
        target.note("projected tensors", str(index))
    hooks = Substitution(target.controller.activation, target.name, projector, tensors, places)
    entries = [model]
    encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else None
    if isinstance(encoder, nn.Module) and encoder is not model:
        entries.append(encoder)   # generate() runs the encoder on its own
    for module in entries:
        target.add_hook(module.register_forward_pre_hook, hooks.before)
        target.add_hook(module.register_forward_hook, hooks.after, always_call=True)


def _tiny_example(cls):
    def example(model, tmp_dir):
        return cls(intrinsic_dim=200)
    return example


register_method("intrinsic_said", IntrinsicSAID, build_intrinsic, aliases=("said", "intrinsic"),
                example=_tiny_example(IntrinsicSAID))
register_method("intrinsic_did", IntrinsicDID, build_intrinsic, aliases=("did",),
                example=_tiny_example(IntrinsicDID))
