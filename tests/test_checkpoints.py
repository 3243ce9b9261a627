"""Runner checkpoints: pickle-free state, atomic writes under a kill at every point of a save,
rotation (best and the last N), clear errors on damaged files, and the non-finite gradient guard."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from peftlab.errors import PeftlabError
from peftlab.train import checkpoint as ckpt
from peftlab.train.loop import Trainer
from peftlab.train.schema import RunConfig
from test_train_support import tiny_run_config


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing after the fault point runs."""


def _optimizer(seed: int = 0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return layer, optimizer, scheduler


def _save(root, step, keep_last=1):
    layer, optimizer, scheduler = _optimizer(step)
    ckpt.save_checkpoint(root / "last", dict(layer.named_parameters()), {"step": step}, optimizer,
                         scheduler, keep_last)
    return layer


def test_training_state_is_pickle_free_and_restores_optimizer_scheduler_and_every_rng(tmp_path):
    layer, optimizer, scheduler = _optimizer()
    ckpt.save_checkpoint(tmp_path / "last", dict(layer.named_parameters()), {"step": 1}, optimizer, scheduler)
    torch.load(tmp_path / "last" / "optimizer.pt", weights_only=True)     # no pickled objects inside
    expected = (random.random(), np.random.rand(), torch.rand(2))
    _, fresh_optimizer, fresh_scheduler = _optimizer(seed=5)
    ckpt.load_training_state(tmp_path / "last", fresh_optimizer, fresh_scheduler)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    state, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert all(torch.equal(state[0][k], loaded[0][k]) for k in ("exp_avg", "exp_avg_sq"))
    assert fresh_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"] == 1


@pytest.mark.parametrize("point", ["written", "swapped"])
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, point):
    root = tmp_path / "checkpoints"
    previous = _save(root, 4)

    def kill(phase, step):
        raise Killed
    if point == "written":       # new files complete in last.tmp, nothing renamed yet
        monkeypatch.setattr(ckpt, "fault_point", kill)
    else:                        # between the renames: `last` moved to last.old, last.tmp not yet in place
        monkeypatch.setattr(type(root), "rename", _kill_on_second_rename(type(root).rename), raising=True)
    with pytest.raises(Killed):
        _save(root, 8)
    monkeypatch.undo()
    assert ckpt.has_checkpoint(tmp_path)
    target = torch.nn.Linear(3, 2)
    names = dict(previous.named_parameters())
    target_named = dict(target.named_parameters())
    assert ckpt.load_weights(target, root / "last") == {"step": 4}
    assert all(torch.equal(target_named[k], names[k]) for k in names)
    _, optimizer, scheduler = _optimizer()
    ckpt.load_training_state(root / "last", optimizer, scheduler)
    _save(root, 8)                                          # the next save cleans up after the kill
    assert sorted(p.name for p in root.iterdir()) == ["last"] and ckpt.load_state(root / "last")["step"] == 8


def _kill_on_second_rename(rename):
    calls = []

    def patched(self, target):
        calls.append(target)
        if len(calls) == 2:
            raise Killed
        return rename(self, target)
    return patched


def test_a_stale_old_folder_from_a_kill_after_the_swap_is_cleared(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 4)
    _save(root, 8)
    (root / "last.old").mkdir()                             # the kill fell before the old one was removed
    _save(root, 12)
    assert sorted(p.name for p in root.iterdir()) == ["last"] and ckpt.load_state(root / "last")["step"] == 12


def test_rotation_keeps_the_last_n(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8, 10):
        _save(root, step, keep_last=3)
    assert sorted(p.name for p in root.iterdir()) == ["last", "step-6", "step-8"]
    assert [ckpt.load_state(p)["step"] for p in ckpt.rotated(root)] == [6, 8]
    assert ckpt.load_state(root / "last")["step"] == 10


def test_a_run_keeps_best_and_the_last_n_checkpoints(tmp_path):
    config = tiny_run_config(tmp_path, train={"epochs": 2, "batch_size": 8, "eval_steps": 1, "keep_last": 2})
    trainer = Trainer(RunConfig.from_dict(config))
    results = trainer.run()
    root = tmp_path / "run" / "checkpoints"
    steps = results["train"]["steps"]
    assert sorted(p.name for p in root.iterdir()) == ["best", "last", f"step-{steps - 1}"]
    assert ckpt.load_state(root / "last")["step"] == steps
    assert ckpt.load_state(root / "best")["step"] == results["best_step"]
    best = load_file(str(root / "best" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in best.values())


def test_keep_last_below_one_is_refused(tmp_path):
    with pytest.raises(PeftlabError, match="train.keep_last must be >= 1, got 0"):
        RunConfig.from_dict(tiny_run_config(tmp_path, train={"keep_last": 0}))


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_a_damaged_checkpoint_file_is_an_error_naming_it(tmp_path, damage):
    root = tmp_path / "checkpoints"
    _save(root, 4)
    readers = {"trainable.safetensors": lambda: ckpt.load_weights(torch.nn.Linear(3, 2), root / "last"),
               "optimizer.pt": lambda: ckpt.load_training_state(root / "last", *_optimizer()[1:]),
               "trainer_state.json": lambda: ckpt.load_state(root / "last")}
    for name, read in readers.items():
        path = root / "last" / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 16 + data[16:])
        with pytest.raises(PeftlabError, match=name.replace(".", r"\.")):
            read()
        path.write_bytes(data)
        read()                                  # restored: reads again


def test_a_non_finite_gradient_stops_naming_step_parameter_and_group_keeping_the_last_good(
        tmp_path, monkeypatch):
    config = tiny_run_config(tmp_path, train={"epochs": 1, "batch_size": 4, "eval_steps": 2})
    trainer = Trainer(RunConfig.from_dict(config))
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    original = Trainer._forward_loss

    def poisoned(self, items):
        loss = original(self, items)
        if self.state["step"] + 1 == 3:        # a finite loss whose gradient is NaN: 0 * sqrt'(0) = 0 * inf
            loss = loss + 0 * torch.sqrt(param.sum() * 0)
        return loss
    monkeypatch.setattr(Trainer, "_forward_loss", poisoned)
    with pytest.raises(PeftlabError, match=rf"gradient of '{name}' \(parameter group 'default( \(no decay\))?'\) "
                                           r"is nan at step 3: stopped; last good checkpoint: .*checkpoints/last "
                                           r"\(step 2\)"):
        trainer.fit()
    kept = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "trainable.safetensors"))
    assert kept and all(torch.isfinite(t).all() for t in kept.values())
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())["step"] == 2


def test_a_full_disk_gives_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    root = tmp_path / "checkpoints"
    previous = _save(root, 4)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(PeftlabError, match=r"cannot write the checkpoint \(No space left on device\); .*last is "
                                           r"unchanged") as err:
        _save(root, 8)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    target = torch.nn.Linear(3, 2)
    assert ckpt.load_weights(target, root / "last") == {"step": 4}
    assert all(torch.equal(dict(target.named_parameters())[k], v) for k, v in previous.named_parameters())
    assert sorted(p.name for p in root.iterdir()) == ["last"]


def test_a_saved_adapter_follows_the_umask(tmp_path):
    import os
    import peftlab as pl
    from tiny import tiny_model
    old = os.umask(0o022)
    try:
        folder = pl.save(pl.attach(tiny_model("gpt2"), pl.LoRA()), tmp_path / "a")
    finally:
        os.umask(old)
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in folder.iterdir())


def test_checkpoint_files_follow_the_umask(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        _save(tmp_path, 4)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "last").iterdir()} == {
        "trainable.safetensors": 0o644, "optimizer.pt": 0o644, "trainer_state.json": 0o644}


def _save_with_file_size_limit(root, limit: int) -> str:
    """`_save` in a forked child whose writes past `limit` bytes fail (EFBIG), as on a full disk."""
    import os
    import resource
    import signal
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            _save(root, 8)
            message = "saved"
        except BaseException as err:     # noqa: BLE001 - the test looks at what came out
            message = f"{type(err).__name__}: {err}"
        os.write(write_end, message.encode()[:4000])
        os._exit(0)
    os.close(write_end)
    message = os.read(read_end, 8000).decode()
    os.waitpid(pid, 0)
    return message


def test_a_full_disk_while_writing_the_optimizer_state_is_one_line_and_keeps_the_previous(tmp_path):
    root = tmp_path / "checkpoints"
    previous = _save(root, 4)
    weights = (root / "last" / "trainable.safetensors").stat().st_size
    # room for the weights, not for optimizer.pt: torch.save reports that failure as a RuntimeError
    message = _save_with_file_size_limit(root, weights + 64)
    assert message.startswith("PeftlabError: ") and "cannot write the checkpoint" in message, message
    assert "optimizer.pt" in message and "\n" not in message
    target = torch.nn.Linear(3, 2)
    assert ckpt.load_weights(target, root / "last") == {"step": 4}
    assert all(torch.equal(dict(target.named_parameters())[k], v) for k, v in previous.named_parameters())
