"""Peak memory of a stretch of work: on CUDA the allocator's peak, on CPU the process's peak resident
set (VmHWM, reset through /proc/self/clear_refs). Depends on torch alone, so the AdapterHub worker in
its own venv measures with exactly this code too."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def start_peak() -> int:
    """Starts a fresh peak window; returns the baseline (bytes) it is measured from."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")    # resets VmHWM (peak RSS) to the current RSS
    return 1024 * _rss_kib("VmRSS")


def peak_since(baseline: int) -> int:
    """Bytes above `baseline` at the peak since `start_peak`."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    return 1024 * _rss_kib("VmHWM") - baseline


def run_in_fork(measure_once, *args):
    """measure_once(*args) in a forked child, its JSON-able result returned to the parent; an exception
    comes back as its "Type: message" string, never raised past the fork. The child starts from the
    parent's state and its peak is its own; the parent stays as it was."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                           # child
        os.close(read_end)
        try:
            result = json.dumps(measure_once(*args))
        except Exception as err:                           # noqa: BLE001 (reported by the parent)
            result = json.dumps(f"{type(err).__name__}: {err}")
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = json.loads(pipe.read() or "null")
    os.waitpid(pid, 0)
    return result
