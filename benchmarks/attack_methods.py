"""The API attack's values: for each field of each registered method's config, values known to be valid
and values known to be invalid on the tiny models (hidden size 16, 2 layers per stack, 4 heads).

Values come from the field's name where it has a meaning (a rank, a rate, a size) and from its type
otherwise (a wrong type, an unknown choice). `EITHER` marks values where both accepting and refusing
are right (a judgement call the attack does not make); they still count if they crash or hang.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal, Union

NAN, INF = float("nan"), float("inf")
EITHER = "either"

# field name: (valid, invalid)
BY_NAME = {
    "reduction_factor": ([2, 4], [0, -1, 1e-9, 64]),
    "bottleneck_size": ([None, 4], [0, -1, 10**11]),
    "scaling": ([0.5, 2.0, "learned"], [0, NAN, "unlearned"]),
    "init_std": ([None, 0.01], [-1, NAN]),
    "drop_max_layers": ([0], [-1, 100]),
    "drop_inference_layers": ([0], [-1, 100]),
    "r": ([1, 4], [0, -1, 10**12]),
    "alpha": ([1.0, 16.0], [0, NAN, INF]),
    "dropout": ([0.0, 0.1], [-0.1, 1.0, 1.5, NAN]),
    "phm_dim": ([2], [0, -1, 3]),
    "phm_rank": ([1, 2], [0, -1]),
    "phm_init_range": ([None, 0.01, 1.0], [0, -1, 1e12]),
    "low_rank_rank": ([1, 2], [0, -1]),
    "prefix_length": ([1, 5], [0, -1, 10**9]),
    "mlp_hidden": ([8, 32], [0, -1, 10**12]),
    "length": ([1, 3], [0, -1, 10**9]),
    "vocab_range": ([10, 50], []),
    "seed": ([0, 7], [-1]),
    "intrinsic_dim": ([1000], [0, -1, 10**12]),
    "rank_k": ([1, 3], [0, -1]),
    "rank_v": ([1, 3], [0, -1]),
    "r_q": ([1, 4], [-1]), "r_v": ([1, 4], [-1]), "r_o": ([1, 4], [-1]),
    "shared_r_q": ([1, 4], [-1]), "shared_r_v": ([1, 4], [-1]), "shared_r_o": ([1, 4], [-1]),
    "temperature": ([1.0, 0.5], [0, -1, NAN]),
    "num_weight_sets": ([1, 2], [0, -1]),
    "flex_size": ([8], [0, -1]),
    "flex_reduction_factor": ([4.0], [0, -1]),
    "attn_hidden": ([8], [0, -1]),
    "num_sources": ([None], [0, -1]),
    "layers": ([None, [0], [0, 1]], [[99], [-5], "x"]),
    "encoder_layers": ([None], [[99], "x"]),
    "decoder_layers": ([None], [[99], "x"]),
    "leave_out": ([[]], [[-99], "x"]),
    "slots": ([["attn.q"], ["attn.q", "attn.v", "ffn.in"]], [["no.such.slot"], 5]),
    "feedforward_slots": ([["ffn.out"]], [["no.such.slot"]]),
    "target_modules": ([None], [["zzz_matches_nothing"], 5]),
    "rank_pattern": ([{}], [{"q": -1}, {"q": "x"}, "x"]),
    "alpha_pattern": ([{}], [{"q": "x"}, "x"]),
    "targets": ([["q"], ["q", "v", "o"]], [["x"], "qv"]),
    "init_token_ids": ([None, [3, 4]], []),
    "stacks": ([None], [["no_such_stack"]]),
    "adapters": ([], [["no_such_adapter"], 5]),
    "lora": ([], [{"r": -1}, {"method": "houlsby"}]),
    "adapter": ([], [{"method": "houlsby", "reduction_factor": 0}, 7]),
    "prefix": ([], [{"prefix_length": 0}]),
    "parallel_adapter": ([], [{"reduction_factor": -4}]),
}
# fields the attack leaves at the example's value (paths, files, names of tasks, text)
KEEP = {"sources", "tasks", "target_files", "attn_init", "layer_norm_init", "init_text", "tokenizer", "head_from",
        "target_init", "feedforward_modules", "said"}
# judgement calls: an architecture without that stack, or a field whose range peftlab may leave open
EITHER_VALUES = {"decoder_layers": [[0]], "encoder_layers": [[0]], "leave_out": [[99]], "slots": [[]],
                 "scaling": [-1.0], "alpha": [-1.0], "r_q": [0], "r_v": [0], "r_o": [0], "init_std": [0.0],
                 # AdapterDrop is refused for AdapterHub's own configs (compat='adapterhub')
                 "drop_max_layers": [1], "drop_inference_layers": [1],
                 # SAID needs more dimensions than the model has parameter tensors
                 "intrinsic_dim": [8, 100],
                 # PromptTuning reads these only with init='vocab', vocab_ids='sample' (vocab_range) or
                 # init='text' (init_token_ids), and checks them there; under the example's init='random'
                 # they are unused, and accepting an unused value is a judgement call (prompt.py)
                 "vocab_range": [0, -1], "init_token_ids": [[-1], [10**9]],
                 # AdapterHub's (IA)^3 mode of its LoRA needs r=1
                 "composition_mode": ["scale"]}


def _literal(tp):
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [v for a in typing.get_args(tp) for v in (_literal(a) or [])]
        return found or None
    return None


def _by_type(tp, default) -> tuple[list, list, list]:
    """Valid, invalid and either values from a field's annotation and default alone. Switching a flag
    away from its default, or picking another word of a word-or-flag field (residual_before_ln: True or
    "post_add"), may need other fields to match (mh_adapter and output_adapter both off place nothing;
    AdapterHub's options need compat='adapterhub'): such values are judged by neither side."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    union = origin in (Union, types.UnionType)
    optional = union and type(None) in args
    core = [a for a in args if a is not type(None)] if union else [tp]
    base = core[0] if len(core) == 1 else tp
    none = ([None], []) if optional else ([], [None])
    choices = _literal(tp)
    if base is bool:
        return [default] + none[0], ["yes", 2] + none[1], [not default]
    if base is int:
        return none[0], ["8", 2.5, True] + none[1], []
    if base is float:
        return none[0], ["x", True, INF] + none[1], []
    if choices and bool in core:
        return [default] + none[0], ["not-an-option", 3] + none[1], [c for c in [True, False, *choices] if c != default]
    if choices and len(core) > 1:      # a number or a word (scaling: 0.5 or "learned")
        return choices + none[0], ["not-an-option"] + none[1], []
    if choices:
        return choices + none[0], ["not-an-option", 3] + none[1], []
    return none[0], none[1], []


def field_values(config_cls, compat_choices=()) -> dict[str, tuple[list, list, list]]:
    """{field: (valid, invalid, either)} for one config class."""
    hints = typing.get_type_hints(config_cls)
    out = {}
    for field in dataclasses.fields(config_cls):
        name = field.name
        if name in KEEP:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        valid, invalid, either = _by_type(hints[name], default)
        if name in BY_NAME:
            valid, invalid = BY_NAME[name][0] + valid, BY_NAME[name][1] + invalid
        if name == "reduction_factor" and _default_compat(config_cls) == "adapterhub":
            valid, invalid = valid + [64], [v for v in invalid if v != 64]   # AdapterHub raises a size 0 to 1
        if name == "compat":      # its default, its code bases; None where the method is a code base's own
            valid = [default, *compat_choices]
            either = [None] if default is not None else []
            invalid = ["nope", *[c for c in ("compacter", "attempt", "nlprunners") if c not in compat_choices][:1]]
        either = _unique(either + EITHER_VALUES.get(name, []))
        valid = [v for v in _unique(valid) if repr(v) not in map(repr, either)]
        invalid = _unique(invalid)
        if valid or invalid:
            out[name] = (valid, invalid, either)
    return out


def _default_compat(config_cls):
    field = next(f for f in dataclasses.fields(config_cls) if f.name == "compat")
    return field.default


def _unique(values: list) -> list:
    seen, out = set(), []
    for value in values:
        key = repr(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out
