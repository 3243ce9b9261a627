"""Attack 5: a full disk. The child that trains, resumes or saves runs under a file size limit
(RLIMIT_FSIZE) with SIGXFSZ ignored, so that any write past the limit fails with EFBIG, as writes fail
on a full disk; the limits are chosen so that different files fail (config, log, checkpoint, adapter,
plots). Expected: exit 0 with a correct run, or one line naming the path; and afterwards, with room
again, the run resumes (or restarts) to exactly the weights of an untroubled run. pl.save over an
existing adapter must fail in one line and leave the previous adapter loadable and unchanged."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from attack_common import api_verdict, cli_verdict, error_lines, isolated, outcome_of, record, snapshot
from attack_fixtures import base_run_config, config_for, copy_run
from attack_launch import same_weights

FULL = [("train", 300), ("train", 3000), ("train", 12000), ("train", 60000), ("resume", 300), ("resume", 3000),
        ("resume", 12000), ("save", 100), ("save", 2000), ("save", 6000)]
QUICK = [("train", 3000), ("save", 2000)]


def disk_cases(quick: bool) -> list[dict]:
    return [{"what": what, "limit": limit} for what, limit in (QUICK if quick else FULL)]


def _train(argv: list[str], cwd: str) -> dict:
    from peftlab.cli import main
    os.chdir(cwd)
    return {"code": main(argv)}


def _save_over(folder: str, limit: int) -> dict:
    """Save an adapter, then (with the disk full) save another over it: one line, the first intact."""
    import resource
    import torch
    import peftlab as pl
    from attack_api_ops import trained_looking
    from peftlab.core import adapter_state
    from tiny import tiny_model
    first = pl.attach(tiny_model("gpt2"), pl.LoRA(r=2), name="a")
    trained_looking(first, 1)
    pl.save(first, folder, name="a")
    before = snapshot(Path(folder))
    second = pl.attach(tiny_model("gpt2"), pl.LoRA(r=2), name="a")
    trained_looking(second, 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        pl.save(second, folder, name="a")
        outcome = {"verdict": "ok", "message": "saved within the limit"}
    except pl.PeftlabError as err:
        outcome = {"verdict": "refused" if "\n" not in str(err) else "raw", "message": str(err)[:300]}
    if outcome["verdict"] == "refused" and snapshot(Path(folder)) != before:
        return {"verdict": "lost", "message": f"{outcome['message']} | but the previous adapter's files changed"}
    loaded = pl.load(tiny_model("gpt2"), folder)
    expected = second if outcome["verdict"] == "ok" else first
    ours, theirs = adapter_state(loaded, "a"), adapter_state(expected, "a")
    if any(not torch.equal(ours[k], theirs[k]) for k in ours):
        return {"verdict": "lost", "message": f"{outcome['message']} | and the adapter on disk is not the last saved"}
    return outcome


def disk_case(number: int, case: dict, shared: dict, timeout: float) -> dict:
    work = Path(shared["work"]) / "disk" / f"case-{number}"
    work.mkdir(parents=True)
    if case["what"] == "save":
        result = isolated(_save_over, str(work / "adapter"), case["limit"], timeout=timeout)
        verdict = api_verdict(result)
        if verdict is None:
            value = result["value"]
            kind = {"ok": "ok", "refused": "refused", "lost": "lost_data", "raw": "raw_traceback"}[value["verdict"]]
            verdict = (kind, value["message"])
        return _done(number, case, verdict, work, outcome_of(result))
    run = work / "run"
    if case["what"] == "train":
        config = work / "run.json"
        config.write_text(json.dumps(base_run_config(shared, "bert", run)))
        argv, reference = ["train", str(config)], Path(shared["finished_run"])
    else:
        copy_run(shared["finished_run"], run)
        config = config_for(shared, run, work)
        argv, reference = ["train", str(config), "train.max_steps=3", "--resume"], Path(shared["reference_run"])
    last = snapshot(run / "checkpoints" / "last")
    result = isolated(_train, argv, str(work), timeout=timeout, fsize=case["limit"])
    verdict, outcome = cli_verdict(result), outcome_of(result)
    if verdict[0] in ("raw_traceback", "hang"):
        return _done(number, case, verdict, work, outcome)
    if verdict[0] == "refused" and last and not _intact_or_newer(run, last):
        return _done(number, case, ("lost_data", f"{verdict[1]} | but checkpoints/last is damaged"), work, outcome)
    problem = _recover(run, config, argv, reference, timeout)
    if problem:
        return _done(number, case, ("lost_data", f"{verdict[1] or 'exit 0'} | {problem}"), work, outcome)
    return _done(number, case, verdict, work, outcome + "; then resumed to the untroubled run's weights")


def _intact_or_newer(run: Path, before: dict) -> bool:
    """The checkpoint the failed run started from is as it was, or a complete newer one replaced it."""
    now = snapshot(run / "checkpoints" / "last")
    if now == before:
        return True
    state = run / "checkpoints" / "last" / "trainer_state.json"
    try:
        return json.loads(state.read_text())["step"] > json.loads(before["trainer_state.json"])["step"]
    except (OSError, ValueError, KeyError):
        return False


def _recover(run: Path, config: Path, argv: list[str], reference: Path, timeout: float) -> str | None:
    """With room again: resume (or restart) the run; it must end where the untroubled run ends."""
    has_last = (run / "checkpoints" / "last").exists() or (run / "checkpoints" / "last.old").exists()
    again = [a for a in argv if a != "--resume"] + (["--resume"] if has_last else ["overwrite=true"])
    result = isolated(_train, again, str(run.parent), timeout=timeout)
    verdict, message = cli_verdict(result)
    if verdict != "ok":
        lines = error_lines(result.get("stderr", ""))
        return f"with room again the run does not go on: {message or (lines[-1] if lines else verdict)}"
    return same_weights(run, reference)


def _done(number: int, case: dict, verdict: tuple[str, str], work: Path, outcome: str) -> dict:
    if verdict[0] in ("ok", "refused"):
        shutil.rmtree(work, ignore_errors=True)
    return record("disk full", number, case, verdict, outcome=outcome)
