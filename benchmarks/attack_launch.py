"""`peftlab train` as a separate process: a real interpreter (`python -m peftlab.cli`, as a user runs it)
or, for the quick smoke test, a fork of the harness running `peftlab.cli.main` (no import cost). Both
give a handle with `pid`, `poll()`, `wait()` and `stderr`, and a return code as `subprocess` gives it
(-9 for SIGKILL)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path


class Launched:
    def __init__(self, argv: list[str], cwd: Path, env: dict, logs: Path, fork: bool):
        self.err_path = Path(logs) / f"stderr.{time.monotonic_ns()}"
        self.returncode = None
        if fork:
            self.popen = None
            self.pid = _fork_main(argv, cwd, env, self.err_path)
        else:
            with open(self.err_path, "w") as err:
                self.popen = subprocess.Popen([sys.executable, "-m", "peftlab.cli", *argv], cwd=cwd,
                                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=err)
            self.pid = self.popen.pid

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self.popen is not None:
            self.returncode = self.popen.poll()
            return self.returncode
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """The return code, or None after `timeout` seconds (the process is then killed: a hang)."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.01)
                return None
            time.sleep(0.02)
        return self.returncode

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _fork_main(argv: list[str], cwd: Path, env: dict, err_path: Path) -> int:
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        err = open(err_path, "w", buffering=1)
        out = open(os.devnull, "w")
        os.dup2(err.fileno(), 2), os.dup2(out.fileno(), 1)
        sys.stderr, sys.stdout = err, out
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.update(env)
        os.chdir(cwd)
        from peftlab.cli import main
        code = main(argv)
    except BaseException:     # noqa: BLE001 - a traceback is what the attack looks for
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def train_records(run: Path) -> list[dict]:
    path = Path(run) / "log.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return [r for r in out if isinstance(r, dict) and r.get("kind") == "train"]


def same_weights(run: Path, reference: Path, which: str = "last") -> str | None:
    """None when the runs' `which` checkpoints hold equal tensors (bit for bit); else what differs."""
    import torch
    from safetensors.torch import load_file
    name = Path("checkpoints") / which / "trainable.safetensors"
    try:
        a, b = load_file(str(Path(run) / name)), load_file(str(Path(reference) / name))
    except Exception as err:    # noqa: BLE001 - a missing or unreadable checkpoint is the finding
        return f"checkpoints/{which} unreadable: {type(err).__name__}: {str(err)[:200]}"
    if a.keys() != b.keys():
        return f"checkpoints/{which} holds other tensors"
    bad = next((k for k in a if not torch.equal(a[k], b[k])), None)
    return f"checkpoints/{which}: tensor '{bad}' differs from the uninterrupted run's" if bad else None


def consistent(run: Path, reference: Path, steps: int) -> str | None:
    """A finished run folder equal to the uninterrupted reference: each train step logged once, and the
    same `last` and `best` weights."""
    logged = [r["step"] for r in train_records(run)]
    if logged != list(range(1, steps + 1)):
        return f"log.jsonl has train steps {logged[:40]}, expected 1..{steps} once each"
    if not (Path(run) / "results.json").is_file():
        return "no results.json"
    return same_weights(run, reference) or same_weights(run, reference, "best")
