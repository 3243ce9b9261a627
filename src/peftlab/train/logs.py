"""Run logs: JSON lines (`log.jsonl`: train and eval records; `mixing_weights.jsonl`: mean mixing weights
per observed series), mirrored to TensorBoard when it is installed. Only the main process writes."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from .. import observe
from ..errors import PeftlabError
from ..files import atomic_write, regular_file, write_error

LOG, MIXING = "log.jsonl", "mixing_weights.jsonl"


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.writer = None
        for file in (LOG, MIXING) if enabled else ():
            path = self.run_dir / file       # a resumed run appends to its logs: only to its own files
            if path.exists() or path.is_symlink():
                regular_file(path, self.run_dir)     # a FIFO would block; a link out would write elsewhere
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter   # optional extra ([tasks])
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:     # tensorboard is an optional extra: JSON lines are enough
                self.writer = None

    def write(self, record: dict, file: str = LOG) -> None:
        if not self.enabled:
            return
        try:
            with open(self.run_dir / file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:     # disk full: a torn last line at worst, which resume drops
            raise PeftlabError(f"{self.run_dir / file}: cannot write the log ({write_error(err)})") from None
        if self.writer is not None and file == LOG:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint, which the resumed run writes again."""
        if not self.enabled:
            return
        for file in (LOG, MIXING):
            path = self.run_dir / file
            if path.exists():
                text = "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r.get("step", 0) <= step)
                # whole or not at all: a full disk keeps the old log, which the next resume truncates
                atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def observe_mixing(model, batch: dict) -> dict:
    """Mean mixing weights per series over one forward, e.g. {"encoder.fuse": {"labels", "weights"}}."""
    was_training = model.training
    model.eval()
    try:
        with observe.capture() as seen:
            model(**batch)
    finally:
        model.train(was_training)
    out = {}
    for series, item in seen.items():
        weights = item["weights"].reshape(-1, item["weights"].shape[-1]).mean(0)
        out[series] = {"labels": item["labels"], "weights": [round(float(w), 6) for w in weights]}
    return out


def read_jsonl(path: Path) -> list[dict]:
    """The records of a log; a torn line (a kill or a full disk during a write) is dropped with a
    warning: the checkpoint, not the log, is what a resumed run continues from."""
    if not Path(path).exists():
        return []
    records = []
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            warnings.warn(f"{path}:{number}: a torn log line (an interrupted write) is dropped")
            continue
        records.append(record)
    return records
