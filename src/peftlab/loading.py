"""`pl.load`: attach a saved adapter from a directory in any format peftlab reads — its own
(`peftlab_config.json`), HF PEFT's or AdapterHub's (both `adapter_config.json`, told apart by content:
PEFT's names a `peft_type`, AdapterHub's holds a `config` with `model_class` / `version`), or an AdapterHub
AdapterFusion (`adapter_fusion_config.json`, over adapters already attached)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import PeftlabError
from .adapterhub import import_adapterhub
from .adapterhub_format import is_adapterhub
from .adapterhub_fusion import import_adapterhub_fusion, is_fusion_directory
from .files import CONFIG_FILE, read_json
from .io import load as load_peftlab
from .peft_interop import import_peft


def load(model: nn.Module, directory, name: str | None = None, *, trainable: bool = False,
         activate: bool = True, strict: bool = True) -> nn.Module:
    """Attach the adapter saved in `directory` (see `peftlab.io.load` for `strict`). Refuses a different
    base model with a message naming the first difference; on any error the model is left as it was."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return load_peftlab(model, directory, name, trainable=trainable, activate=activate, strict=strict)
    if is_fusion_directory(directory):   # AdapterHub's AdapterFusion (adapter_fusion_config.json)
        return import_adapterhub_fusion(model, directory, name, trainable=trainable, activate=activate, strict=strict)
    if (directory / "adapter_config.json").is_file():
        if is_adapterhub(read_json(directory / "adapter_config.json")):
            return import_adapterhub(model, directory, name, trainable=trainable, activate=activate, strict=strict)
        return import_peft(model, directory, name, trainable=trainable, activate=activate)
    if not directory.exists():
        raise PeftlabError(f"{directory}: not found")
    raise PeftlabError(f"{directory}: no saved adapter here (expected {CONFIG_FILE}, or the "
                       f"adapter_config.json of HF PEFT or AdapterHub)")
