"""The train loop's progress: a tqdm bar on a terminal; in a log file or a pipe, where a bar's
carriage returns would pile up, one plain line every few percent of the steps."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, initial: int, stream=None, percent: float = 5.0):
        self.total, self.stream = max(total, 1), stream or sys.stderr
        self.every = max(1, round(self.total * percent / 100))
        self.bar = None
        if _is_terminal(self.stream):
            from tqdm.auto import tqdm   # optional: only on a terminal (tqdm.auto probes for notebooks)
            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=self.stream)

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate:.1f}", refresh=False)
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            self.stream.write(f"train: step {step}/{self.total} ({100 * step / self.total:.0f}%)  "
                              f"loss {loss:.4f}  {rate:.1f} examples/s\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
