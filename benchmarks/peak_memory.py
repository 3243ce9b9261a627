"""Peak memory of a stretch of work: on CUDA the allocator's peak, on CPU the process's peak resident
set (VmHWM, reset through /proc/self/clear_refs). Depends on torch alone, so the AdapterHub worker in
its own venv measures with exactly this code too."""
from __future__ import annotations

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
