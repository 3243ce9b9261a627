"""Fuzzed configs for every registered method: each either attaches, runs forward/backward and
save/load, or raises a ValueError/TypeError naming the offending field — never an internal error, and
never a half-attached model."""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Literal, Union

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peftlab as pl
from peftlab.config import MethodConfig
from peftlab.registry import contract_cases, get_method
from tiny import tiny_batch, tiny_model

SLOT_WORDS = ["attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out", "attn_block_out", "no.such.slot"]


def _strategy(tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-3, 40)
    if tp is float:
        return st.one_of(st.floats(-2, 70, allow_nan=False), st.just(float("nan")), st.just(0.0))
    if origin is Literal:
        return st.sampled_from([*args, "not-an-option"])
    if origin in (Union, types.UnionType):
        return st.one_of(*[_strategy(a) for a in args if _strategy(a) is not None])
    if tp is type(None):
        return st.none()
    if origin is tuple and args and args[0] is int:
        return st.lists(st.integers(-4, 4), max_size=3).map(tuple)
    if origin is tuple and args and args[0] is str:
        return st.lists(st.sampled_from(SLOT_WORDS), min_size=0, max_size=3).map(tuple)
    return None   # strings, paths and nested configs keep their example values


def _fuzzable(config_cls):
    hints = typing.get_type_hints(config_cls)
    out = {}
    for field in dataclasses.fields(config_cls):
        strategy = _strategy(hints[field.name])
        if strategy is not None:
            out[field.name] = strategy
    return out


def _names_a_field(err, fields) -> bool:
    return any(re.search(rf"\b{re.escape(key)}\b", str(err)) for key in fields)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [n for n, _ in model.named_modules()]


def _run(method, arch, overrides, tmp_path):
    base = contract_cases(method, tiny_model(arch), tmp_path)
    if base is None:
        return
    data = {**base.to_dict(), **overrides}
    try:
        config = get_method(method).config_cls.from_dict(data)
    except (ValueError, TypeError) as err:
        assert _names_a_field(err, overrides), f"{err!r} does not name a fuzzed field"
        return
    model = tiny_model(arch)
    before = _snapshot(model)
    try:
        pl.attach(model, config, name="fuzz")
    except (ValueError, TypeError) as err:
        # a deliberate PeftlabError names the offending value (a slot, a layer index); others must name a field
        assert isinstance(err, pl.PeftlabError) or _names_a_field(err, overrides), repr(err)
        state, modules = before
        assert [n for n, _ in model.named_modules()] == modules
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        return
    model.train()
    loss = model(**tiny_batch(arch)).loss
    if torch.isfinite(loss):
        loss.backward()
    pl.save(model, tmp_path / "fuzz")
    pl.load(tiny_model(arch), tmp_path / "fuzz")


METHODS = pl.method_names()


@pytest.mark.parametrize("method", METHODS)
def test_fuzzed_configs(method, tmp_path_factory):
    fields = _fuzzable(get_method(method).config_cls)
    if not fields:
        pytest.skip("no fuzzable fields")
    overrides = st.fixed_dictionaries({}, optional=fields)

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(overrides=overrides, arch=st.sampled_from(["t5", "bert", "gpt2", "llama"]))
    def check(overrides, arch):
        _run(method, arch, overrides, tmp_path_factory.mktemp("fuzz"))

    check()
