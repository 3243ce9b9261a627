"""The hostile-user attack (benchmarks/attack.py) in its quick mode: a few cases of every attack class
(runner configs, API calls, tamperings, a kill, disk full, concurrent runs) run, and none ends as a raw
traceback, silent garbage, lost data or a hang. The full attack is the benchmark itself."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _cpu_seconds() -> float:
    own, forks = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + forks.ru_utime + forks.ru_stime


def test_the_quick_attack_finds_nothing_bad(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import attack
    finally:
        sys.path.remove(str(BENCHMARKS))
    started, cpu = time.perf_counter(), _cpu_seconds()
    rows = attack.main(["--quick", "--quiet", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    # under 30 s: measured in CPU seconds (this process and its forks), which other jobs on the machine do
    # not stretch; on an idle 2-core machine the wall time is about the same (~20 s)
    assert _cpu_seconds() - cpu < 30
    assert time.perf_counter() - started < 180          # and nothing waited on a timeout
    assert set(rows) == set(attack.QUICK)          # every attack class ran
    cases = json.loads((tmp_path / "out" / "attack_quick.json").read_text())["cases"]
    bad = [c for c in cases if c["class"] in attack.BAD]
    assert not bad, bad
    assert len(cases) == sum(attack.QUICK.values())
    assert "| tamperings | 6 |" in (tmp_path / "out" / "attack_quick.md").read_text()
