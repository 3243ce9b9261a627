"""Reading and writing the files peftlab uses, safely: JSON, safetensors, tensors saved by `torch.save`.

Every reader turns a missing, unreadable or malformed file into one `PeftlabError` line naming it; a
`.pt`/`.bin`/`.p` file is read with `torch.load(weights_only=True)` only (tensors, never code), on the CPU.
Writers write to a temporary name beside the target and rename it, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import PeftlabError

CONFIG_FILE, WEIGHTS_FILE = "peftlab_config.json", "peftlab_weights.safetensors"


def atomic_write(path: Path, write) -> None:
    """Call `write(temporary_path)`, then rename the result to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftlabError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PeftlabError(f"{path}: not valid JSON ({err})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise PeftlabError(f"{path}: file not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftlabError(f"{path}: unreadable or truncated safetensors file ({err})") from None


def read_torch_tensors(path: Path):
    """What a `torch.save` file holds, if it is only tensors (and plain containers of them): loaded
    with `weights_only=True` on the CPU; a file holding anything else (code, objects) is refused."""
    path = Path(path)
    if not path.is_file():
        raise PeftlabError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:     # weights_only raises UnpicklingError (and others) on anything but tensors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftlabError(f"{path}: refused: not a file of tensors only ({first[:160]})") from None
