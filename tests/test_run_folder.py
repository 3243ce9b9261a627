"""A run folder is peftlab's own: a run that cannot start leaves the previous run byte for byte, an
overwritten run is replaced only by one that started, a folder that is not a run (or the current one)
is refused, and two runs never share a folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peftlab.cli import main
from peftlab.train.rundir import MARKER, RunFolder
from test_train_support import tiny_run_config


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def finished(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(tiny_run_config(tmp_path, train={"max_steps": 2, "eval_steps": 2})))
    assert main(["train", str(path)]) == 0
    return path, tmp_path / "run"


@pytest.mark.parametrize("override", ["model.name=nonexistent-model", "method.reduction_factor=-1",
                                      "data.dir=/nonexistent", "tasks=[no_such_task]"])
def test_a_run_that_cannot_start_leaves_the_previous_run_byte_identical(finished, capsys, override):
    path, run = finished
    before = snapshot(run)
    assert {"config.json", "results.json", "report.md", MARKER} <= set(before)
    assert main(["train", str(path), "overwrite=true", override]) == 2
    _error(capsys)
    assert snapshot(run) == before


def test_overwrite_replaces_the_run_but_keeps_what_peftlab_did_not_write(finished, capsys):
    path, run = finished
    (run / "my_notes.txt").write_text("mine")
    old_config = (run / "config.json").read_text()
    assert main(["train", str(path), "overwrite=true", "train.seed=7"]) == 0
    assert (run / "my_notes.txt").read_text() == "mine"
    assert (run / "config.json").read_text() != old_config
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7


def test_a_run_without_checkpoints_is_still_a_run_and_is_not_replaced_silently(finished, capsys):
    path, run = finished
    import shutil
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    assert main(["train", str(path), "train.seed=7"]) == 2
    assert "a run is already there" in _error(capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("output_dir", ["", ".", "./"])
def test_the_current_folder_is_refused_and_left_alone(tmp_path, capsys, monkeypatch, output_dir):
    work = tmp_path / "work"
    (work / "plots").mkdir(parents=True)
    (work / "plots" / "fig.png").write_bytes(b"png")
    (work / "results.json").write_text("{}")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(tiny_run_config(tmp_path, output_dir=output_dir, overwrite=True)))
    monkeypatch.chdir(work)
    before = snapshot(work)
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    assert "current folder" in _error(capsys)
    assert snapshot(work) == before


def test_a_non_empty_folder_that_is_no_run_is_refused(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "adapter" / "mywork").mkdir(parents=True)
    (mine / "adapter" / "mywork" / "weights.bin").write_bytes(b"w")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(tiny_run_config(tmp_path, output_dir=str(mine), overwrite=True)))
    before = snapshot(mine)
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    assert "not a peftlab run" in _error(capsys)
    assert snapshot(mine) == before


def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(finished, capsys):
    path, run = finished
    holder = RunFolder(run)
    holder.take(resume=True, overwrite=False)
    try:
        before = snapshot(run)
        assert main(["train", str(path), "overwrite=true"]) == 2
        assert f"another run is using this folder (pid {os.getpid()})" in _error(capsys)
        before.pop(MARKER)
        after = snapshot(run)
        after.pop(MARKER)
        assert after == before
    finally:
        holder.release()
    assert main(["train", str(path), "overwrite=true"]) == 0     # released: the folder is free again


def test_a_second_fresh_run_into_a_held_folder_names_the_holder_not_the_run_it_finds(finished, capsys):
    path, run = finished
    holder = RunFolder(run)
    holder.take(resume=True, overwrite=False)
    try:
        assert main(["train", str(path)]) == 2          # not overwrite: the folder also holds a run
        assert f"another run is using this folder (pid {os.getpid()})" in _error(capsys)
    finally:
        holder.release()
