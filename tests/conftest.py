import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(1)   # tiny models: one thread is faster and does not oversubscribe a 2-core box
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no model hub here; fail fast instead of retrying


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """peftlab's cache (dequantized GGUF models) in a folder of the test session, never the user's."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path_factory.getbasetemp() / "peftlab-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
