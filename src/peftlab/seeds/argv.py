"""Command-line flags read as the seeds' argparse (and transformers' HfArgumentParser) read them: unique
prefixes, `--no_X`, optional-value booleans, the last occurrence winning; typed, with one-line refusals."""
from __future__ import annotations

import re

from ..config import closest
from .base import refuse

# --- argparse, as train.py's ArgumentParser and [tf] HfArgumentParser read flags ----------------------

REQUIRED = object()
BOOLS = {"yes": True, "true": True, "t": True, "y": True, "1": True,
         "no": False, "false": False, "f": False, "n": False, "0": False}     # [tf] hf_argparser.py:30-40
NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$")


def parse_args(args: list[str], flags: dict, source: str, script: str) -> tuple[dict, set]:
    """flag -> (kind, default[, choices]); kinds: str int float list, bool ([tf] nargs='?', const True; a
    default True also adds --no_<flag>), bool! (a value required), flag (store_true). argparse's unique
    prefixes are accepted; the last occurrence wins; an unknown flag or a bad value is refused."""
    names = list(flags) + [f"no_{k}" for k, v in flags.items() if v[0] == "bool" and v[1] is True]
    values, given, i = {}, set(), 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            refuse(source, token, f"unrecognized argument ({script} takes --flags only)")
        key, eq, inline = token[2:].partition("=")
        flag = resolve_flag(key, names, source)
        dest, negated = (flag[3:], True) if flag not in flags else (flag, False)
        kind = "flag" if negated else flags[dest][0]
        raw, i = _values(args, i + 1, kind, inline if eq else None, f"--{flag}", source)
        values[dest] = False if negated else _typed(dest, flags[dest], raw, source, script)
        given.add(dest)
    for dest, spec in flags.items():
        if dest not in given:
            if spec[1] is REQUIRED:
                refuse(source, f"--{dest}", f"required by {script} (argparse exits without it)")
            values[dest] = spec[1]
    return values, given


def resolve_flag(key: str, names: list[str], source: str) -> str:
    """The flag `key` names: exactly, or as argparse's unique prefix (allow_abbrev); else one line."""
    if key in names:
        return key
    matches = [n for n in names if n.startswith(key)] if key else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        refuse(source, f"--{key}", f"ambiguous: could be {', '.join('--' + m for m in matches[:4])}")
    refuse(source, f"--{key}", f"unknown flag{closest(key, names)}")


def _values(args, i, kind, inline, flag, source) -> tuple:
    def is_value(t):
        return not t.startswith("-") or bool(NEGATIVE.match(t))
    if kind == "flag":
        if inline is not None:
            refuse(source, flag, "takes no value")
        return True, i
    if inline is not None:
        return (inline if kind != "list" else [inline]), i
    taken = []
    while i < len(args) and is_value(args[i]) and (kind == "list" or not taken):
        taken.append(args[i])
        i += 1
    if kind == "bool" and not taken:
        return True, i                                # nargs='?', const=True
    if not taken:
        refuse(source, flag, ("expected one argument" if kind != "list" else "expected at least one argument")
               + " (argparse exits: is a shell variable unset?)")
    return (taken if kind == "list" else taken[0]), i


def _typed(dest: str, spec: tuple, raw, source: str, script: str):
    kind, choices = spec[0], (spec[2] if len(spec) > 2 else None)
    if kind in ("bool", "bool!") and not isinstance(raw, bool):
        if raw.lower() not in BOOLS:
            refuse(source, f"--{dest} {raw}", "expected a boolean (yes/no, true/false, t/f, y/n, 1/0)")
        raw = BOOLS[raw.lower()]
    elif kind in ("int", "float"):
        try:
            raw = int(raw) if kind == "int" else float(raw)
        except ValueError:
            refuse(source, f"--{dest}", f"expected {'an int' if kind == 'int' else 'a float'}, got {raw!r} ({script})")
    if choices and raw not in choices:
        refuse(source, f"--{dest} {raw}", f"invalid choice: one of {', '.join(map(str, choices))}")
    return raw


def flag_table(text: str, choices: dict) -> dict:
    """'name:kind=default ...' -> {name: (kind, default, choices)}; '!' required, '-' None."""
    out = {}
    for item in text.split():
        name, kind, default = re.match(r"(\w+):([a-z!]+)=(.*)$", item).groups()
        value = {"!": REQUIRED, "-": None, "''": "", "True": True, "False": False}.get(default, default)
        if isinstance(value, str) and kind in ("int", "float") and value:
            value = int(value) if kind == "int" else float(value)
        out[name] = (kind, value, choices.get(name))
    return out
