"""What a run shows its user: the report's train loss is the log's, epochs advance in the log and in
TensorBoard, a log file gets a progress line every few percent (never each step twice), predictions
carry the task's label names."""
from __future__ import annotations

import io
import json

import pytest

from peftlab.cli import main
from peftlab.tasks import get_task
from peftlab.train.progress import Progress
from test_train_support import tiny_run_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs")
    config = tiny_run_config(tmp, train={"epochs": 1, "log_steps": 2, "tensorboard": True, "batch_size": 4})
    path = tmp / "run.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path)]) == 0
    return tmp / "run"


def _records(run, kind):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
            if json.loads(line).get("kind") == kind]


def test_the_reports_final_train_loss_is_the_logs_last_smoothed_loss(run):
    results = json.loads((run / "results.json").read_text())
    last = _records(run, "train")[-1]
    assert results["train"]["final_loss"] == pytest.approx(last["loss"])
    assert f"final train loss: {last['loss']:.4f}" in (run / "report.md").read_text()


def test_epochs_advance_within_an_epoch_in_the_log_and_in_tensorboard(run):
    epochs = [r["epoch"] for r in _records(run, "train")]
    assert epochs == sorted(epochs) and 0 < epochs[0] < epochs[-1] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    values = [e.value for e in events.Scalars("train/epoch")]
    assert values[-1] == pytest.approx(epochs[-1]) and values[0] > 0


def test_a_log_file_gets_a_line_every_five_percent_and_never_a_step_twice():
    stream = io.StringIO()      # not a terminal: no tqdm bar
    progress = Progress(total=200, initial=0, stream=stream)
    for step in range(1, 201):
        progress.update(step, loss=0.5, rate=10.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in stream.getvalue()
    assert lines[0].startswith("train: step 10/200 (5%)") and lines[-1].startswith("train: step 200/200 (100%)")


@pytest.mark.parametrize("task,index,name", [("sst2", 1, "positive"), ("cola", 0, "unacceptable"),
                                             ("mrpc", 1, "equivalent"), ("rte", 0, "entailment"),
                                             ("cb", 2, "neutral"), ("copa", 1, "choice2"), ("stsb", 2.4, "2.4")])
def test_predictions_are_written_with_the_tasks_label_names(task, index, name):
    assert get_task(task).verbalize(index) == name
