"""The runtime under every adapter: Hosts (wrapped modules) and the Parts placed in them, the
composition evaluator, per-row routing and the undo journal. It knows nothing of methods or state."""
from .host import Activation, Host
from .parts import Handoff, HandoffTap, Part, live, run_post, run_pre
from .surgery import Journal, add_hook, add_part, base_module, ensure_host, get_module, hosts, named_base_modules, \
    named_base_parameters, set_attr, set_module

__all__ = ["Activation", "Host", "Handoff", "HandoffTap", "Part", "live", "run_post", "run_pre", "Journal",
           "add_hook", "add_part", "base_module", "ensure_host", "get_module", "hosts", "named_base_modules",
           "named_base_parameters", "set_attr", "set_module"]
