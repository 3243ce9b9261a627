"""The one method registry: name -> (config class, builder).

A builder is `build(target, **plain_arguments)`: it places modules through the `AttachTarget` it is
given (never by editing the model itself), so that a failure anywhere rolls back cleanly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import MethodConfig, closest
from .errors import PeftlabError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    build: Callable
    aliases: tuple[str, ...] = ()
    example: Callable | None = None   # (tiny model, tmp_dir) -> config or None, for the contract suite


_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register_method(name: str, config_cls: type[MethodConfig], build: Callable, aliases=(),
                    example: Callable | None = None) -> None:
    """Register a method under a unique name; its config class gets `method = name`.

    `example(model, tmp_dir)` returns a config for the contract tests on a tiny random `model` (or None
    where the method does not apply); by default the config's own defaults are used."""
    for key in (name, *aliases):
        if key in _ALIASES:
            raise RuntimeError(f"method name '{key}' registered twice")
        _ALIASES[key] = name
    config_cls.method = name
    config_cls.method_aliases = tuple(aliases)
    _METHODS[name] = MethodSpec(name, config_cls, build, tuple(aliases), example)


def unregister_method(name: str) -> None:
    """Remove a method and its aliases (for tests that register a probe method)."""
    spec = _METHODS.pop(name)
    for key in (name, *spec.aliases):
        _ALIASES.pop(key, None)


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    key = name.lower()
    if key not in _ALIASES:
        raise PeftlabError(f"unknown method '{name}'{closest(key, _ALIASES)}; known: {', '.join(method_names())}")
    return _METHODS[_ALIASES[key]]


def spec_for(config: MethodConfig) -> MethodSpec:
    if not isinstance(config, MethodConfig):
        raise PeftlabError(f"expected a method config such as pl.LoRA(...), got {type(config).__name__}")
    return get_method(config.method)


def config_from_dict(data: dict, strict: bool = True) -> MethodConfig:
    """`{"method": "compacter", ...}` -> a validated config object."""
    if "method" not in data:
        raise PeftlabError("method config needs a 'method' key, e.g. {'method': 'lora', 'r': 8}")
    return get_method(str(data["method"])).config_cls.from_dict(data, strict=strict)


def contract_cases(name: str, model, tmp_dir) -> MethodConfig | None:
    """The config the contract suite uses for method `name` on a tiny `model` (None: does not apply)."""
    spec = get_method(name)
    return spec.example(model, tmp_dir) if spec.example else spec.config_cls()
