"""Safe loading, fingerprints, and no leaks across many attach/detach cycles and training steps."""
from __future__ import annotations

import gc
import json
import re
import resource
from pathlib import Path

import pytest
import torch

import peftlab as pl
from tiny import tiny_batch, tiny_config, tiny_model

SRC = Path(__file__).parent.parent / "src" / "peftlab"


def test_source_has_no_unsafe_deserialization_or_eval():
    offenders = []
    for path in SRC.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            unsafe_torch_load = "torch.load(" in code and "weights_only=True" not in code
            if unsafe_torch_load or re.search(r"\b(pickle|dill|cloudpickle)\.loads?\(|(?<![.\w])(eval|exec)\(", code):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_saved_adapter_is_safetensors_and_json_only(tmp_path):
    model = pl.attach(tiny_model("t5"), pl.Houlsby(reduction_factor=4))
    pl.save(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peftlab_config.json", "peftlab_weights.safetensors"]


def test_strict_false_loads_on_a_compatible_base_and_says_what_differs(tmp_path):
    model = pl.attach(tiny_model("gpt2"), pl.LoRA())
    pl.save(model, tmp_path)
    config = tiny_config("gpt2")
    config.n_inner = 48               # a different FFN width; LoRA on attention still fits
    import transformers as tf
    other = tf.GPT2LMHeadModel(config)
    with pytest.raises(pl.PeftlabError, match="mlp.c_fc.weight"):
        pl.load(other, tmp_path)
    with pytest.warns(UserWarning, match=r"strict=False although base parameter 'transformer.h.0.mlp.c_fc.weight'"):
        pl.load(other, tmp_path, strict=False)
    assert list(pl.adapters(other)) == ["default"]


def test_strict_false_still_refuses_adapter_tensors_that_do_not_fit(tmp_path):
    model = pl.attach(tiny_model("gpt2"), pl.LoRA(slots=("ffn.in",)))
    pl.save(model, tmp_path)
    config = tiny_config("gpt2")
    config.n_inner = 48
    import transformers as tf
    other = tf.GPT2LMHeadModel(config)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.warns(UserWarning), pytest.raises(pl.PeftlabError, match=r"has shape \[64, 8\], expected \[48, 8\]"):
        pl.load(other, tmp_path, strict=False)
    assert other.state_dict().keys() == before.keys()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("config", [pl.LoRA(), pl.Houlsby(reduction_factor=4, drop_max_layers=1)],
                         ids=lambda c: c.method)
def test_attach_detach_1000_times_leaves_nothing_behind(config):
    model = tiny_model("t5")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks, n_modules = _hook_count(model), len(list(model.modules()))
    gc.collect()
    objects_before = len(gc.get_objects())
    for i in range(1000):
        pl.attach(model, config, name="a")
        pl.detach(model, "a")
        if i == 100:
            gc.collect()
            objects_at_100 = len(gc.get_objects())
    gc.collect()
    assert _hook_count(model) == hooks and len(list(model.modules())) == n_modules
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert len(gc.get_objects()) - objects_at_100 < 500, "objects accumulate across attach/detach cycles"
    assert len(gc.get_objects()) - objects_before < 5000


def test_1000_training_steps_keep_memory_flat():
    model = pl.attach(tiny_model("gpt2"), pl.Houlsby(reduction_factor=4, drop_max_layers=1))
    model.train()
    batch = tiny_batch("gpt2")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def steps(n):
        for _ in range(n):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    steps(100)
    gc.collect()
    objects, rss = len(gc.get_objects()), _rss_mb()
    steps(900)
    gc.collect()
    assert len(gc.get_objects()) - objects < 200
    assert _rss_mb() - rss < 50


# --- the runner: resume survives a torn log and refuses a changed config or a forged state ----------

def _first_run(tmp_path):
    from test_train_support import tiny_run_config
    from peftlab.train.loop import Trainer
    from peftlab.train.schema import RunConfig
    config = tiny_run_config(tmp_path, train={"max_steps": 2, "eval_strategy": "no"})
    Trainer(RunConfig.from_dict(config)).run()
    return config


def _resume(config, **train):
    from peftlab.train.loop import Trainer
    from peftlab.train.schema import RunConfig
    changed = {**config, "train": {**config["train"], **train}}
    return Trainer(RunConfig.from_dict(changed), resume=True).run()


def test_a_torn_log_line_is_dropped_with_a_warning_and_the_run_resumes(tmp_path):
    config = _first_run(tmp_path)
    with open(Path(config["output_dir"]) / "log.jsonl", "a") as log:
        log.write('{"kind": "train", "step":')            # a disk filled up mid-write
    with pytest.warns(UserWarning, match="a torn log line"):
        results = _resume(config, max_steps=3)
    assert results["train"]["steps"] == 3


def test_resume_refuses_a_changed_config_naming_the_key(tmp_path):
    config = _first_run(tmp_path)
    with pytest.raises(pl.PeftlabError, match=r"--resume: train.learning_rate is 0.5 here but 0.01 in the saved run"):
        _resume(config, max_steps=3, learning_rate=0.5)
    with pytest.raises(pl.PeftlabError, match=r"--resume: train.batch_size is 4"):
        _resume(config, max_steps=3, batch_size=4)
    saved = json.loads((Path(config["output_dir"]) / "config.json").read_text())
    assert saved["train"]["learning_rate"] == 0.01 and saved["train"]["max_steps"] == 2
    assert _resume(config, max_steps=3)["train"]["steps"] == 3      # how long it runs may change


def test_a_forged_trainer_state_or_checkpoint_is_refused(tmp_path):
    config = _first_run(tmp_path)
    last = Path(config["output_dir"]) / "checkpoints" / "last"
    state = json.loads((last / "trainer_state.json").read_text())
    (last / "trainer_state.json").write_text(json.dumps({**state, "step": 1_000_000_000}))
    with pytest.raises(pl.PeftlabError, match="trainer_state.json: edited after the checkpoint was written"):
        _resume(config, max_steps=3)
    (last / "trainer_state.json").write_text(json.dumps(state))
    from safetensors.torch import load_file, save_file
    tensors = load_file(last / "trainable.safetensors")
    tensors.pop(sorted(tensors)[0])                       # a deleted tensor
    save_file(tensors, last / "trainable.safetensors")
    with pytest.raises(pl.PeftlabError, match="the checkpoint's weights changed since it was saved"):
        _resume(config, max_steps=3)


def _hung(*_):
    raise TimeoutError("hung on the FIFO")


def test_a_fifo_or_a_link_out_of_the_run_in_place_of_the_log_is_refused_on_resume(tmp_path):
    import os
    import signal
    config = _first_run(tmp_path)
    log = Path(config["output_dir"]) / "log.jsonl"
    others = tmp_path / "other-log.jsonl"
    others.write_text(log.read_text())
    log.unlink()
    log.symlink_to(others)                  # appending would write into another run's log
    with pytest.raises(pl.PeftlabError, match=r"log.jsonl: a symbolic link out of"):
        _resume(config, max_steps=3)
    assert others.read_text() == log.read_text()
    log.unlink()
    os.mkfifo(log)                          # reading it would wait for a writer forever
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(20)
    try:
        with pytest.raises(pl.PeftlabError, match=r"log.jsonl: not a regular file"):
            _resume(config, max_steps=3)
    finally:
        signal.alarm(0)


def test_a_resume_refused_on_a_damaged_checkpoint_leaves_the_saved_config_as_it_was(tmp_path):
    config = _first_run(tmp_path)
    run = Path(config["output_dir"])
    saved = (run / "config.json").read_bytes()
    weights = run / "checkpoints" / "last" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(pl.PeftlabError, match="the checkpoint's weights changed since it was saved"):
        _resume(config, max_steps=3)               # max_steps may change on resume: it would be recorded
    assert (run / "config.json").read_bytes() == saved


def test_a_checkpoint_left_at_last_old_by_a_kill_between_the_renames_resumes(tmp_path):
    config = _first_run(tmp_path)
    last = Path(config["output_dir"]) / "checkpoints" / "last"
    last.rename(last.with_name("last.old"))
    assert _resume(config, max_steps=3)["train"]["steps"] == 3
