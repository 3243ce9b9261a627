"""`train.keep_freed_memory`: with glibc, a train step re-uses the memory the previous step freed instead of
faulting its pages in again.

Each check runs in a fresh interpreter: the setting is process-wide and would leak into other tests."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from peftlab.train.allocator import user_tuned_malloc

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting applies to glibc's malloc on Linux only")

STEP_FAULTS = """
import resource, sys, torch
from peftlab.train.allocator import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
net = torch.nn.Sequential(torch.nn.Linear(64, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 64))
x = torch.randn(4096, 64)              # 64 MiB activations: over glibc's largest dynamic mmap threshold
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x).square().sum().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, sum([step() for _ in range(10)][2:]))   # the 8 steps after the first two
"""


def _run(mode: str, env=None) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True,
                          env={**clean, **(env or {})}, check=True)
    applied, faults = done.stdout.split()
    return applied, int(faults)          # (whether it was applied, page faults of steps 3 to 10)


@glibc_only
def test_steady_train_steps_fault_hardly_any_pages_in():
    block = (64 << 20) // 4096                      # pages of one 64 MiB activation
    applied, faults = _run("keep")
    # now and then glibc cannot fit an aligned block into the hole its predecessor left and maps one anew:
    # at most 2 blocks in 8 steps were seen, against about 4 blocks in every step by default
    assert applied == "True" and faults < 6 * block
    assert _run("default")[1] > 16 * block          # the default: the activations mapped afresh every step


@glibc_only
def test_the_users_own_malloc_settings_win():
    applied, faults = _run("keep", {"MALLOC_ARENA_MAX": "2"})
    assert applied == "False" and faults > 16 * (64 << 20) // 4096


def test_user_tuned_malloc_reads_the_environment():
    assert user_tuned_malloc({"MALLOC_TRIM_THRESHOLD_": "1"})
    assert user_tuned_malloc({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert not user_tuned_malloc({"GLIBC_TUNABLES": "glibc.rtld.nns=2", "PATH": "/bin"})


@pytest.mark.parametrize("keep", [True, False])
def test_the_runner_applies_it_as_configured(tmp_path, monkeypatch, keep):
    from peftlab.train import loop
    from peftlab.train.schema import RunConfig
    from test_train_support import tiny_run_config
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(1) or True)
    loop.Trainer(RunConfig.from_dict(tiny_run_config(tmp_path, train={"keep_freed_memory": keep})))
    assert calls == ([1] if keep else [])
