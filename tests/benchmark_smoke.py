"""What the benchmark smoke tests share: where benchmarks/ and ../shared/data are, and the skips for a
machine without the GLUE files or the offline MiniLM package."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DATA = ROOT.parent / "shared" / "data"


def _minilm_installed() -> bool:
    from peftlab.models import offline_path
    path = offline_path("minilm")
    return path is not None and path.is_dir()


NEEDS_GLUE_AND_MINILM = [
    pytest.mark.skipif(not (DATA / "glue" / "SST-2").is_dir(), reason=f"no GLUE files under {DATA}"),
    pytest.mark.skipif(not _minilm_installed(), reason="the offline MiniLM package (its tokenizer) is not installed"),
]
