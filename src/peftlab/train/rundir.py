"""A run folder is a thing peftlab owns.

A folder becomes a run folder when a run takes it: the marker file `peftlab-run.json` is written first,
and the run holds an exclusive lock on it (`fcntl.flock`) until it ends, so a second run into the same
folder is refused in one line naming the holder's pid. peftlab deletes only the entries a run writes
(`RUN_ENTRIES`), and only in a folder that carries its marker; a non-empty folder without one, the
current folder or `""` is refused. Folders written by peftlab before the marker existed (a
`config.json` beside `checkpoints/` or `log.jsonl`) are recognised and get their marker when taken.

The checks (`check`) change nothing; a run takes the folder (`take`) only once its model, data and
method have been built, so a run that cannot start leaves a previous run exactly as it was, and an
overwritten run is replaced only by one that started.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..errors import PeftlabError

MARKER = "peftlab-run.json"
# Everything a run writes at the top of its folder (the marker aside).
RUN_ENTRIES = ("config.json", "log.jsonl", "mixing_weights.jsonl", "results.json", "report.md",
               "checkpoints", "adapter", "tensorboard", "plots")


class RunFolder:
    def __init__(self, path):
        self._handle = None
        text = str(path)
        if text.strip() in ("", "."):
            raise PeftlabError(f"output_dir {text!r} is the current folder: give the run a folder of its own, "
                               f"e.g. output_dir=runs/my_run")
        self.path = Path(text)
        if self.path.resolve() == Path.cwd().resolve():
            raise PeftlabError(f"output_dir {text!r} is the current folder: give the run a folder of its own")

    # --- reading ---------------------------------------------------------------------------------
    def is_peftlab(self) -> bool:
        if (self.path / MARKER).is_file():
            return True
        legacy = (self.path / "config.json").is_file() and \
            ((self.path / "checkpoints").is_dir() or (self.path / "log.jsonl").is_file())
        return legacy

    def holds_a_run(self) -> bool:
        return any((self.path / name).exists() or (self.path / name).is_symlink() for name in RUN_ENTRIES)

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse, in one line and changing nothing, a folder this run may not use."""
        if self.path.exists() and not self.path.is_dir():
            raise PeftlabError(f"output_dir {self.path}: exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.is_peftlab():
            raise PeftlabError(f"output_dir {self.path}: a non-empty folder that is not a peftlab run "
                               f"(no {MARKER}); peftlab will not write into it — choose another output_dir")
        holder = self.holder()      # first: a live run explains the rest (a folder with a run in it)
        if holder is not None:
            raise PeftlabError(f"{self.path}: another run is using this folder (pid {holder}); wait for it "
                               f"or choose another output_dir")
        last = self.path / "checkpoints" / "last"
        # a kill between a checkpoint's two renames leaves it at last.old, which loading recovers first
        if resume and not (last.is_dir() or last.with_name("last.old").is_dir()):
            raise PeftlabError(f"{self.path}: nothing to resume (no checkpoints/last)")
        if not resume and not overwrite and self.path.is_dir() and self.holds_a_run():
            raise PeftlabError(f"{self.path}: a run is already there; pass --resume, set overwrite=true or "
                               f"choose another output_dir")

    def holder(self) -> int | None:
        """The pid of a live run holding this folder's lock, or None."""
        marker = self.path / MARKER
        if not marker.is_file() or self._handle is not None:
            return None
        with open(marker, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _recorded_pid(marker)
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    # --- taking -----------------------------------------------------------------------------------
    def take(self, resume: bool, overwrite: bool) -> None:
        """Create the folder and its marker, lock it, and (not resuming) clear the previous run."""
        self.check(resume, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / MARKER, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise PeftlabError(f"{self.path}: another run is using this folder (pid "
                               f"{_recorded_pid(self.path / MARKER)}); wait for it or choose another output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"peftlab_run": 1, "pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        handle.flush()
        self._handle = handle
        if not resume:
            self.clear()

    def clear(self) -> None:
        """Delete what a previous run wrote here (only `RUN_ENTRIES`; anything else stays)."""
        for name in RUN_ENTRIES:
            entry = self.path / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __del__(self):
        self.release()


def _recorded_pid(marker: Path) -> str:
    try:
        return str(json.loads(marker.read_text()).get("pid", "?"))
    except (OSError, ValueError, AttributeError):
        return "?"
