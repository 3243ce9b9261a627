"""What the mixing methods (AdapterFusion, the weighted multi-adapter) share: where they act.

A mixing adapter places one "mix" part at every module where a member adapter acts on the output; the
Host hands that part the module's output h and the members' outputs (runtime/evaluate.py)."""
from __future__ import annotations

from ..errors import PeftlabError
from ..runtime import hosts
from ..targeting import Site


def member_sites(target, adapters) -> list[Site]:
    """Modules where a member acts on the output, in model order; raise on a member that cannot mix."""
    controller = target.controller
    paths = set()
    for name in adapters:
        attachment = controller.adapters.get(name)
        if attachment is None:
            raise PeftlabError(f"cannot mix '{name}': no adapter of that name is attached")
        if attachment.config.mixed_members():
            raise PeftlabError(f"cannot mix '{name}': it is itself a mixing adapter ({attachment.config.method})")
        for path, part in attachment.parts:
            if part.role == "input":
                raise PeftlabError(f"cannot mix '{name}': its {type(part).__name__} at {path} changes the "
                                   f"module's input; only adapters acting on outputs can be mixed")
            if part.role in ("add", "output"):
                paths.add(path)
    sites = [Site(h.stack, h.layer, "mix", h.path) for h in hosts(target.model) if h.path in paths]
    if not sites:
        raise PeftlabError(f"adapters {list(adapters)} act on no module output: nothing to mix")
    return sites
