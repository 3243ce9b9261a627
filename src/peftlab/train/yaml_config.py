"""The YAML peftlab reads configs with: YAML 1.2 scalars, no duplicate keys, a bound on aliases, and
plain data only (a `!!python/...` tag is refused by the safe loader, in one line)."""
from __future__ import annotations

import re

import yaml

from ..errors import PeftlabError

MAX_ALIASES = 100      # a config has no use for more; a "billion laughs" file needs thousands
# values once every alias is expanded: a run config has a few hundred; a "billion laughs" of fewer than
# MAX_ALIASES aliases (9 levels of 9) still expands to 43 million, which later code would copy
MAX_VALUES = 100_000


class _Loader(yaml.SafeLoader):
    """Scalars read as YAML 1.2 and JSON read them: YAML 1.1 reads `1e-3` as a string and `no`, `yes`,
    `on`, `off` as booleans, so `eval_strategy: no` would arrive as False; a config means the number and
    the word. Booleans are `true` / `false`. A key given twice is refused (YAML keeps the last silently),
    and so is a file with more than MAX_ALIASES aliases (each expands in place: a few lines can ask for
    gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
            if self.aliases_seen > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise PeftlabError(f"line {mark.line + 1}: more than {MAX_ALIASES} YAML aliases: refused")
        return super().compose_node(parent, index)

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {})
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise PeftlabError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _expanded_size(node, seen: dict) -> int:
    """How many values `node` stands for with its aliases expanded (each shared node counted once per
    use, computed once); refused past MAX_VALUES."""
    if id(node) in seen:
        return seen[id(node)]
    seen[id(node)] = 1          # a recursive alias counts once instead of looping
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    size = 1 + sum(_expanded_size(child, seen) for child in children)
    if size > MAX_VALUES:
        raise PeftlabError(f"line {node.start_mark.line + 1}: the YAML expands to more than {MAX_VALUES:,} values "
                           f"through its aliases: refused")
    seen[id(node)] = size
    return size


def yaml_load(text: str):
    """The data of a YAML text; a value Python cannot hold (an integer of thousands of digits) or a
    nesting too deep to read is one line, like any other malformed file."""
    try:
        return yaml.load(text, Loader=_Loader)
    except PeftlabError:
        raise
    except (ValueError, RecursionError) as err:
        raise PeftlabError(f"not a readable value ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
