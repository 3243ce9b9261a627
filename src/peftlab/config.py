"""Typed, validated method configs that round-trip through JSON and reject unknown keys."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
import warnings
from typing import Any, ClassVar, Literal, Union

from .errors import PeftlabError


def closest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, where: str):
    """Return `value` checked against the annotation `tp` (lists become tuples); raise on mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args:
            return value
        raise PeftlabError(f"{where}: {value!r} is not one of {list(args)}{closest(str(value), map(str, args))}")
    if origin in (Union, types.UnionType):
        nested = None
        for option in args:
            try:
                return coerce(value, option, where)
            except PeftlabError as err:
                if isinstance(value, dict) and isinstance(option, type) and issubclass(option, MethodConfig):
                    nested = err   # the nested config's own message says more than "does not fit"
        if nested is not None:
            raise nested
        raise PeftlabError(f"{where}: {value!r} does not fit {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise PeftlabError(f"{where}: expected None, got {value!r}")
    if origin is tuple:
        if isinstance(value, str) and args and args[0] is str and len(args) == 2 and args[1] is Ellipsis:
            value = (value,)      # one name where a list of names goes (HF PEFT's target_modules="q_proj")
        if not isinstance(value, (list, tuple)):
            raise PeftlabError(f"{where}: expected a list, got {value!r}")
        if args and Ellipsis not in args:      # a fixed-length tuple (adam_betas): one value per slot
            if len(value) != len(args):
                raise PeftlabError(f"{where}: expected {len(args)} values, got {list(value)!r}")
            return tuple(coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        return tuple(coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise PeftlabError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, MethodConfig):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            cls = named_config(tp, str(value["method"])) if "method" in value else tp
            if cls is None:   # a preset of the field's method (pfeiffer for a Bottleneck field) is fine
                raise PeftlabError(f"{where}: expects a '{tp.method}' config, got method '{value['method']}'")
            try:
                return cls.from_dict(value)
            except PeftlabError as err:
                raise PeftlabError(f"{where}: {err}") from None
        raise PeftlabError(f"{where}: expected a {tp.__name__} config, got {value!r}")
    return _coerce_scalar(value, tp, where)


def named_config(base: type, name: str) -> type | None:
    """The config class named `name` (its method name or an alias) among `base` and its subclasses."""
    key = name.lower()
    todo = [base]
    while todo:
        cls = todo.pop()
        if key == cls.method or key in getattr(cls, "method_aliases", ()):
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _coerce_scalar(value, tp, where):
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise PeftlabError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise PeftlabError(f"{where}: expected {_type_name(tp)}, got {value!r}")


class CheckedConstruction(type):
    """Configs are built from keywords only, and an unknown keyword is one line with the closest field:
    `pl.Compacter(reduction_factr=3)` says "did you mean 'reduction_factor'" instead of a TypeError."""

    def __call__(cls, *args, **kwargs):
        if args:
            raise PeftlabError(f"{cls.__name__} takes its fields by name, e.g. {cls.__name__}("
                               f"{_example_field(cls)}=...); got {len(args)} positional value(s)")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in kwargs:
            if key not in names:
                raise PeftlabError(f"{cls.__name__}: unknown key '{key}'{closest(key, names)}")
        return super().__call__(**kwargs)


def _example_field(cls) -> str:
    """A field the class itself declares (the first of its own, else of its nearest parent's)."""
    for klass in cls.__mro__:
        own = [name for name in vars(klass).get("__annotations__", {}) if not name.startswith("_")]
        own = [name for name in own if name != "method"]
        if own:
            return own[0]
    return "unfreeze_layer_norms"


# The seed code bases (DESIGN §7): `compat` reproduces one of them where it departs from its paper.
CODE_BASES = ("compacter", "attempt", "kernel-adapters", "nlprunners", "adapterhub")


@dataclasses.dataclass
class MethodConfig(metaclass=CheckedConstruction):
    """Base of every method config: typed fields, validated at construction, JSON round-trip.

    Subclasses set `method` (the registry name) and may override `validate()` for cross-field rules.
    """

    method: ClassVar[str] = ""                    # the registry name, set by `register_method`
    method_aliases: ClassVar[tuple[str, ...]] = ()
    # the seed code bases whose own behaviour (quirks included) `compat` reproduces for this method
    compat_choices: ClassVar[tuple[str, ...]] = ()
    unfreeze_layer_norms: bool = False
    unfreeze_lm_head: bool = False
    train_head: bool = True  # a task head (classifier, score) is new, so it trains with any method
    compat: str | None = None   # None: the method as its paper and reference code define it (docs/fidelity.md)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            where = f"{type(self).__name__}.{field.name}"
            setattr(self, field.name, coerce(getattr(self, field.name), hints[field.name], where))
        self._check_compat()
        self.validate()

    def _check_compat(self) -> None:
        name = type(self).__name__
        if self.compat is None:
            return
        if self.compat not in CODE_BASES:
            raise PeftlabError(f"{name}.compat: {self.compat!r} is not one of {list(CODE_BASES)}"
                               f"{closest(self.compat, CODE_BASES)}")
        if self.compat not in self.compat_choices:
            choices = ", ".join(repr(c) for c in self.compat_choices) or "none"
            raise PeftlabError(f"{name}.compat={self.compat!r}: {name} has no behaviour of that code base to "
                               f"reproduce (compat choices: {choices}; see docs/fidelity.md)")

    def validate(self) -> None:
        """Cross-field checks; raise PeftlabError naming the field."""

    @property
    def identity_at_init(self) -> bool:
        """True when attaching leaves the model's outputs unchanged (checked by the contract suite)."""
        return False

    @property
    def mergeable(self) -> bool:
        """True when `merge` can fold the method into the base weights."""
        return False

    def frozen_members(self) -> tuple[str, ...]:
        """Adapters this one mixes and keeps frozen while it is active (AdapterFusion's members)."""
        return ()

    def mixed_members(self) -> tuple[str, ...]:
        """The adapters whose outputs this one mixes (empty: not a mixing method)."""
        return ()

    def member_sources(self) -> dict[str, str]:
        """Saved adapters to load (name -> directory or file) before attaching this one, when absent."""
        return {}

    def build_kwargs(self) -> dict:
        """The plain arguments a builder receives (the generic switches are handled by attach); a
        method that reproduces a code base's behaviour also gets `compat`."""
        generic = {f.name for f in dataclasses.fields(MethodConfig)}
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in generic}
        if self.compat_choices:
            kwargs["compat"] = self.compat
        return kwargs

    def to_dict(self) -> dict:
        out = {"method": self.method}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.to_dict() if isinstance(value, MethodConfig) else _jsonable(value)
        return out

    @classmethod
    def from_dict(cls, data: dict, strict: bool = True) -> "MethodConfig":
        """Build from a mapping; unknown keys raise (strict) or warn and are dropped (forward compat)."""
        data = dict(data)
        data.pop("method", None)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown and strict:
            key = unknown[0]
            raise PeftlabError(f"{cls.__name__}: unknown key '{key}'{closest(key, names)}")
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown keys {unknown} (saved by a newer peftlab?)")
        return cls(**{k: v for k, v in data.items() if k in names})


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def check(condition: bool, message: str) -> None:
    """Raise a PeftlabError with `message` unless `condition` holds."""
    if not condition:
        raise PeftlabError(message)


@dataclasses.dataclass
class LayeredConfig(MethodConfig):
    """A method placed per layer: `layers` for every stack, or `encoder_layers` / `decoder_layers`
    separately; `leave_out` drops layer indices from every stack (static AdapterDrop)."""

    layers: tuple[int, ...] | None = None
    encoder_layers: tuple[int, ...] | None = None
    decoder_layers: tuple[int, ...] | None = None
    leave_out: tuple[int, ...] = ()
