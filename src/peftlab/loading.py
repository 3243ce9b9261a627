"""`pl.load`: attach a saved adapter from a directory in any format peftlab reads — its own
(`peftlab_config.json`) or HF PEFT's (`adapter_config.json`)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import PeftlabError
from .files import CONFIG_FILE
from .io import load as load_peftlab
from .peft_interop import import_peft


def load(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
         activate: bool = True, strict: bool = True) -> nn.Module:
    """Attach the adapter saved in `directory` (see `peftlab.io.load` for `strict`). Refuses a different
    base model with a message naming the first difference; on any error the model is left as it was."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return load_peftlab(model, directory, name, trainable=trainable, activate=activate, strict=strict)
    if (directory / "adapter_config.json").is_file():
        return import_peft(model, directory, name, trainable=trainable, activate=activate)
    if not directory.exists():
        raise PeftlabError(f"{directory}: not found")
    raise PeftlabError(f"{directory}: no saved adapter here (expected {CONFIG_FILE}, or HF PEFT's "
                       f"adapter_config.json)")
