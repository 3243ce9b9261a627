"""Full fine-tuning: every base parameter trains (and is restored on detach)."""
from dataclasses import dataclass

from ..config import MethodConfig
from ..registry import register_method


@dataclass
class FullFinetune(MethodConfig):
    @property
    def identity_at_init(self) -> bool:
        return True


def build_full(target):
    target.claim(list(target.base_parameters()))


register_method("full", FullFinetune, build_full, aliases=("full_finetune", "finetune"))
