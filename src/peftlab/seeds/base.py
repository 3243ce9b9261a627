"""What translating one original (a seed code base's config file, run script or command line) yields.

A `Translation` is a peftlab run config built key by key, each value remembering the original key (or
flag) it came from, plus the original keys that have no effect on the experiment (logging, output paths,
caching), each with its reason. A key that would change the experiment and that peftlab cannot honour
is refused in one line — never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import closest
from ..errors import PeftlabError


@dataclass
class Translation:
    code_base: str                                   # compacter | attempt | kernel-adapters | nlprunners
    source: str                                      # the original, as given
    config: dict = field(default_factory=dict)       # the peftlab run config (nested mapping)
    origin: dict[str, str] = field(default_factory=dict)    # dotted peftlab key -> original key(s)
    ignored: dict[str, str] = field(default_factory=dict)   # original key -> why it changes nothing
    notes: list[str] = field(default_factory=list)  # what the reader of the translation should know

    def set(self, dotted: str, value, origin: str) -> None:
        """Put `value` at `dotted` (e.g. "train.learning_rate"), noting where it came from."""
        node = self.config
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        self.origin[dotted] = origin

    def get(self, dotted: str, default=None):
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def ignore(self, key: str, reason: str) -> None:
        self.ignored[key] = reason

    def to_yaml(self) -> str:
        """The run config as YAML, each line commented with the original key it came from."""
        lines = [f"# peftlab translation of {self.source} ({self.code_base})"]
        lines += [f"# {note}" for note in self.notes]
        lines += _yaml_lines(self.config, "", self.origin)
        if self.ignored:
            lines.append("# ignored (no effect on the experiment):")
            lines += [f"#   {key}: {reason}" for key, reason in sorted(self.ignored.items())]
        return "\n".join(lines) + "\n"


def _yaml_lines(node: dict, prefix: str, origin: dict, indent: int = 0) -> list[str]:
    out = []
    pad = "  " * indent
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else key
        comment = f"  # {origin[dotted]}" if dotted in origin else ""
        if isinstance(value, dict) and value and key not in ("sources",):
            out.append(f"{pad}{key}:{comment}")
            out += _yaml_lines(value, dotted, origin, indent + 1)
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
            text = text[:-4].rstrip() if text.endswith("\n...") or text.endswith("...") else text
            out.append(f"{pad}{key}: {text}{comment}")
    return out


class Keys:
    """The keys of one original, consumed one by one: each must be translated, ignored or refused;
    `finish` refuses whatever is left, naming the closest known key."""

    def __init__(self, values: dict, known: set[str], source: str, kind: str = "key"):
        self.values, self.known, self.source, self.kind = dict(values), set(known), source, kind
        self.used: set[str] = set()
        unknown = [k for k in self.values if k not in self.known]
        if unknown:
            raise PeftlabError(f"{source}: unknown {kind} '{unknown[0]}'{closest(unknown[0], self.known)}; "
                               f"peftlab reads every {kind} of this code base, and this one is none of them")

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default=None):
        self.used.add(key)
        value = self.values.get(key, default)
        return default if value is None else value

    def take(self, key: str):
        self.used.add(key)
        return self.values[key]

    def has(self, key: str) -> bool:
        """Present with a value (None counts as absent, as the code's argument parsers read it)."""
        return self.values.get(key) is not None

    def left(self) -> list[str]:
        return [k for k in self.values if k not in self.used]


def refuse(source: str, key: str, why: str) -> None:
    raise PeftlabError(f"{source}: {key}: {why}")


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def resolve(path: str, root: Path | None) -> str:
    """A relative path as the code reads it: against its working directory, when that copy exists."""
    if root is not None and not Path(path).is_absolute() and (root / path).exists():
        return str(root / path)
    return str(path)
