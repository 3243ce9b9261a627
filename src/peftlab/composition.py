"""Checking a composition before it becomes the active setup: names attached, nesting allowed, each
mixing block's adapter attached with the block's settings, no mixing adapter used as a plain name.
Nothing here changes the model: creating a fusion or a multi-adapter is `pl.attach(model, block)`."""
from __future__ import annotations

from .blocks import Average, Mixing, WeightedSum, Fuse, check_nesting, member_names, normalize, walk
from .config import closest
from .errors import PeftlabError
from .registry import config_from_dict
from .state import Controller

IGNORED_MIXER_KEYS = ("sources",)   # where members were loaded from does not change the mixing


def expand_mixer(block, controller: Controller):
    """Activating a mixing adapter by its name (as `load` does) activates its block."""
    names = (block,) if isinstance(block, str) else block if isinstance(block, tuple) else ()
    attachment = controller.adapters.get(names[0]) if len(names) == 1 else None
    if attachment is None or not attachment.config.mixed_members():
        return block
    config = attachment.config
    if config.method == "fusion":
        options = {k: getattr(config, k) for k in Fuse.OPTIONS}
        return Fuse(*config.adapters, name=attachment.name, temperature=config.temperature, **options)
    options = {k: v for k, v in config.to_dict().items() if k in WeightedSum.OPTIONS}
    return WeightedSum(*config.adapters, name=attachment.name, **options)


def checked(block, controller: Controller):
    """`block` normalized and checked against what is attached; raises naming the first problem."""
    block = expand_mixer(normalize(block), controller)
    if isinstance(block, Average):
        raise PeftlabError(f"an Average creates a new adapter: pl.attach(model, {block!r}), then activate "
                           f"'{block.name}'")
    for name in member_names(block):
        if name not in controller.adapters:
            raise PeftlabError(f"no adapter named '{name}'{closest(name, controller.adapters)}; "
                               f"attached: {', '.join(controller.adapters) or 'none'}")
    check_nesting(block)
    for name in member_names(block):
        config = controller.adapters[name].config
        if config.mixed_members():
            raise PeftlabError(f"'{name}' holds mixing weights ({config.method}); activate it alone "
                               f"or through its block, e.g. pl.Fuse(..., name='{name}')")
    for inner in walk(block):
        if isinstance(inner, Mixing):
            check_mixer(inner, controller)
    return block


def check_mixer(block: Mixing, controller: Controller) -> None:
    """The adapter holding `block`'s mixing weights is attached, with the block's settings."""
    attached = controller.adapters.get(block.name)
    wanted = config_from_dict(block.mixer_config())
    if attached is None:
        raise PeftlabError(f"no {wanted.method} adapter '{block.name}' is attached: create it first with "
                           f"pl.attach(model, {block!r})")
    if _settings(attached.config) != _settings(wanted):
        raise PeftlabError(f"an adapter named '{block.name}' exists with other settings "
                           f"({attached.config.method} over {list(attached.config.mixed_members())}); "
                           f"detach it or give the block another name=")


def _settings(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in IGNORED_MIXER_KEYS}
