"""Shared pieces of the hostile-user attack (benchmarks/attack.py): running one case in its own forked
process with a time limit, classifying what came back, snapshots of folders, and the tiny fixtures.

Every case runs in a fork of the harness (torch and peftlab are imported once, so a case costs
milliseconds, not an interpreter start), with its stdout and stderr in files and a memory limit, so that
a case that hangs, crashes or allocates terabytes is measured instead of taking the harness down.
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT / "tests", ROOT / "src"):   # tiny models and run configs come from the test helpers
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

# one thread: a forked child must not inherit a half-started OpenMP pool, and the box has 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

CLASSES = ("ok", "refused", "raw_traceback", "silent_garbage", "lost_data", "hang", "valid_refused")
BAD = ("raw_traceback", "silent_garbage", "lost_data", "hang")
MEMORY_LIMIT = 8 << 30     # a case asking for more gets a failed allocation, which must be one line


def isolated(fn, *args, timeout: float = 30.0, fsize: int | None = None) -> dict:
    """Run `fn(*args)` in a forked child; returns {"status": returned | raised | hang | crashed, ...}
    with the child's stdout and stderr (through pipes, which a file size limit does not touch).
    `fsize` caps the size of any file the child writes (a full disk: writes past it fail with EFBIG)."""
    pipes = [os.pipe() for _ in range(3)]     # result, stdout, stderr
    sys.stdout.flush(), sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:     # the child: never returns
        for read_end, _ in pipes:
            os.close(read_end)
        _child([w for _, w in pipes], fn, args, fsize)
    for _, write_end in pipes:
        os.close(write_end)
    streams, finished = _read_until([r for r, _ in pipes], started + timeout)
    for read_end, _ in pipes:
        os.close(read_end)
    if not finished:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    data, out, err = (b"".join(chunks) for chunks in streams)
    result = {"seconds": round(time.perf_counter() - started, 3), "stdout": _text(out), "stderr": _text(err)}
    if not finished:
        return {**result, "status": "hang"}
    if not data:
        return {**result, "status": "crashed", "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
    return {**result, **json.loads(data)}


def _child(ends: list[int], fn, args, fsize: int | None) -> None:
    try:
        os.dup2(ends[1], 1), os.dup2(ends[2], 2)    # C code and old logging handlers write to the fds
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        try:
            payload = {"status": "returned", "value": fn(*args)}
        except BaseException as error:    # noqa: BLE001 - what escaped is exactly what is measured
            payload = describe(error)
        sys.stdout.flush(), sys.stderr.flush()
        blob = json.dumps(payload, default=repr).encode()
        while blob:
            blob = blob[os.write(ends[0], blob[:1 << 16]):]
    finally:
        os._exit(0)


def describe(error: BaseException) -> dict:
    from peftlab.errors import PeftlabError
    return {"status": "raised", "type": type(error).__name__, "message": str(error)[:2000],
            "peftlab": isinstance(error, PeftlabError), "traceback": traceback.format_exc()[-3000:]}


def _read_until(fds: list[int], deadline: float) -> tuple[list[list[bytes]], bool]:
    """Everything written to `fds` until the first (the result) closes; False if the deadline passed."""
    chunks: list[list[bytes]] = [[] for _ in fds]
    open_fds = list(fds)
    while fds[0] in open_fds:
        left = deadline - time.perf_counter()
        if left <= 0:
            return chunks, False
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                chunks[fds.index(fd)].append(chunk)
            else:
                open_fds.remove(fd)
    return chunks, True


def _text(data: bytes) -> str:
    return data.decode(errors="replace")[-4000:]


# --- classification -----------------------------------------------------------------------------------

def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines ("peftlab train: error: ..."), ignoring warnings and progress bars."""
    return [line for line in stderr.splitlines() if line.startswith("peftlab ")]


def cli_verdict(result: dict) -> tuple[str, str]:
    """('ok' | 'refused' | 'raw_traceback' | 'hang', message) for one `peftlab.cli.main` call."""
    failed = api_verdict(result)
    if failed is not None:
        return failed
    code, stderr = result["value"]["code"], result["stderr"]
    lines = error_lines(stderr)
    if "Traceback" in stderr:
        return "raw_traceback", stderr.strip().splitlines()[-1][:300]
    if code == 0:
        return "ok", ""
    if code == 2 and len(lines) == 1:
        return "refused", lines[0][:400]
    return "raw_traceback", f"exit {code}: {stderr.strip()[-300:]}"


def api_verdict(result: dict) -> tuple[str, str] | None:
    """The class of a call that did not return normally (None: it returned; the caller judges)."""
    if result["status"] == "hang":
        return "hang", f"no answer after {result['seconds']} s"
    if result["status"] == "crashed":
        return "raw_traceback", f"the process died (signal {result.get('signal')}, exit {result.get('exit')})"
    if result["status"] == "raised":
        return "raw_traceback", f"{result['type']}: {result['message'][:300]}"
    return None


def settle(expect: str, verdict: str, message: str, changed: str | None = None) -> tuple[str, str]:
    """Combine what was expected (valid | invalid | either) with what happened. A refusal that changed
    files or the model is lost data whatever was expected."""
    if verdict in ("raw_traceback", "hang"):
        return verdict, message
    if verdict == "refused":
        if changed:
            return "lost_data", f"{message} | but {changed}"
        return ("valid_refused", message) if expect == "valid" else ("refused", message)
    if expect == "invalid":
        return "silent_garbage", message or "accepted"
    return "ok", message


def one_line_error(error: dict) -> str | None:
    """The message of a one-line PeftlabError, or None when the error was anything else."""
    if error.get("peftlab") and "\n" not in error["message"] and error["message"].strip():
        return error["message"]
    return None


def outcome_of(result: dict) -> str:
    """What the isolated call did, in a few words: its exit code, what it raised, or that it hung."""
    status, value = result["status"], result.get("value")
    if status == "returned" and isinstance(value, dict) and "code" in value:
        return f"exit {value['code']}"
    if status == "returned" and isinstance(value, dict) and "verdict" in value:
        return {"ok": "returned", "refused": "raised PeftlabError"}.get(value["verdict"], value["verdict"])
    if status == "raised":
        return f"raised {result['type']}"
    if status == "hang":
        return f"no answer, killed after {result['seconds']} s"
    return "returned" if status == "returned" else f"died (signal {result.get('signal')})"


def record(attack: str, number: int, case: dict, verdict: tuple[str, str], seconds: float | None = None,
           outcome: str = "") -> dict:
    kind, message = verdict
    out = {"attack": attack, "id": number, "input": case, "class": kind, "outcome": outcome, "message": message}
    if seconds is not None:
        out["seconds"] = seconds
    return out


# --- folders ------------------------------------------------------------------------------------------

def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict:
    """{relative path: bytes} of every regular file under `folder` (FIFOs and symlinks by their kind)."""
    out = {}
    folder = Path(folder)
    if not folder.exists():
        return out
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        if path.is_symlink():
            out[rel] = f"symlink:{os.readlink(path)}".encode()
        elif path.is_fifo():
            out[rel] = b"fifo"
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


def lost(before: dict, after: dict) -> str | None:
    """The first file that existed before and was changed or removed; None when all are intact."""
    for rel, data in before.items():
        if rel not in after:
            return f"{rel} was removed"
        if after[rel] != data:
            return f"{rel} was changed"
    return None
