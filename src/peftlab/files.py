"""Reading and writing the files peftlab uses, safely: JSON, safetensors, tensors saved by `torch.save`.

Every reader turns a missing, unreadable or malformed file into one `PeftlabError` line naming it; a
`.pt`/`.bin`/`.p` file is read with `torch.load(weights_only=True)` only (tensors, never code), on the CPU.
Writers write to a temporary name beside the target and rename it, so a crash never leaves half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
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
    tmp = _temporary(path, write)
    _replace(tmp, path)


def atomic_write_pair(first: Path, write_first, second: Path, make_second) -> None:
    """Two files that belong together (weights and the config naming their digest): both are written in
    full to temporary names, `make_second(first_temporary)` giving the second's writer, before either
    replaces its old file; a failed write (a full disk) leaves both old files as they were."""
    first, second = Path(first), Path(second)
    tmp_first = _temporary(first, write_first)
    try:
        tmp_second = _temporary(second, make_second(Path(tmp_first)))
    except BaseException:
        os.remove(tmp_first)
        raise
    _replace(tmp_first, first)
    _replace(tmp_second, second)


def _temporary(path: Path, write) -> str:
    """`write(temporary)` beside `path`, readable as any file the user writes; the temporary's name."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())     # mkstemp makes it 0600
        return tmp
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, (OSError, SafetensorError)):     # disk full, read-only folder: the old file stays
            raise PeftlabError(f"{path}: cannot write it ({write_error(err)}); the previous file is "
                               f"unchanged") from None
        raise


def _replace(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as err:      # `path` is a folder, or the folder went away
        os.remove(tmp)
        raise PeftlabError(f"{path}: cannot write it ({write_error(err)}); the previous file is unchanged") from None


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(err: Exception) -> str:
    """The reason of a failed write in a few words (ENOSPC: 'No space left on device')."""
    return getattr(err, "strerror", None) or str(err).strip().splitlines()[-1][-120:] or type(err).__name__


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(regular_file(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def regular_file(path: Path, folder: Path | None = None) -> Path:
    """`path` if it is a regular file (not a FIFO, device or folder) and, when `folder` is given, does
    not lead outside it through a symbolic link; else one line naming it."""
    path = Path(path)
    if not path.exists():
        raise PeftlabError(f"{path}: file not found")
    if not stat.S_ISREG(path.stat().st_mode):
        raise PeftlabError(f"{path}: not a regular file")
    if folder is not None and path.is_symlink():
        inside = Path(folder).resolve()
        if inside not in path.resolve().parents:
            raise PeftlabError(f"{path}: a symbolic link out of {folder} (to {path.resolve()}): refused")
    return path


def verify_digest(path: Path, expected: str | None, what: str) -> None:
    """Refuse a file whose SHA-256 differs from the one recorded when it was written."""
    if expected is not None and sha256_of(path) != expected:
        raise PeftlabError(f"{path}: {what} changed since it was saved (SHA-256 differs): refused")


def check_finite(tensors: dict, path: Path) -> None:
    """Saved weights hold no NaN or infinity: such a file is damaged (or saved from a diverged run)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PeftlabError(f"{path}: tensor '{name}' holds NaN or infinite values")


def content_digest(data) -> str:
    """SHA-256 of a JSON-able value in one canonical spelling (what a config says, not how it is laid out)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
