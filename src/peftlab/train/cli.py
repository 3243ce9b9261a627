"""`peftlab train | eval | predict | plot`: thin wrappers over the loop, the evaluator and the plots."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import PeftlabError
from ..tasks import get_task, load_splits
from ..tasks.base import Example, load_rows
from ..tasks.readers import read_csv, read_jsonl, read_tsv
from .checkpoint import load_weights
from .evaluate import evaluate, predict
from .loop import Trainer
from .modeling import build_model, uses_task_ids
from .plots import plot_run
from .report import averages, table
from ..seeds import translate
from .schema import RunConfig, load_run_configs


def cli_train(args) -> dict | None:
    """Train every run the config names (a run script may hold several), each checked before any
    starts; returns the last run's results."""
    configs = load_run_configs(getattr(args, "config", None), getattr(args, "overrides", ()),
                               getattr(args, "command_line", None))
    results = None
    for index, config in enumerate(configs, start=1):
        if len(configs) > 1:
            print(f"run {index} of {len(configs)}: {config.output_dir}")
        trainer = Trainer(config, resume=getattr(args, "resume", False))
        results = trainer.run()
        if results is not None:
            plot_run(config.output_dir)
            print(table(results))
            print(f"results: {Path(config.output_dir) / 'results.json'}, report: {Path(config.output_dir) / 'report.md'}")
    return results


def cli_translate(args) -> list[str]:
    """Print the peftlab YAML of a seed original, each line commented with the key it came from."""
    texts = [t.to_yaml() for t in translate(getattr(args, "config", None), argv=getattr(args, "command_line", None))]
    print("---\n".join(texts), end="")
    return texts


def load_run(run_dir):
    """(config, model, tokenizer, kind, tasks) rebuilt from a run directory's best (else last) weights."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise PeftlabError(f"{run_dir}: not a run directory (no config.json)")
    config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    tasks = config.task_list()
    model, tokenizer, kind = build_model(config, tasks)
    best = run_dir / "checkpoints" / "best"
    load_weights(model, best if best.exists() else run_dir / "checkpoints" / "last")
    return config, model, tokenizer, kind, tasks


def _pick_task(tasks, name):
    if name is None:
        if len(tasks) > 1:
            raise PeftlabError(f"this run trained {[t.name for t in tasks]}: name one with --task")
        return 0, tasks[0]
    wanted = get_task(name).name
    names = [t.name for t in tasks]
    if wanted not in names:
        raise PeftlabError(f"task '{name}' was not trained in this run (trained: {', '.join(names)})")
    index = names.index(wanted)
    return index, tasks[index]


def cli_eval(args) -> dict:
    config, model, tokenizer, kind, tasks = load_run(args.run_dir)
    per_task: dict = {}
    if args.data:
        index, task = _pick_task(tasks, args.task)
        picked = {task.name: (index, task, {"data": load_rows(task, Path(args.data))})}
    else:
        picked = {t.name: (i, t, load_splits(t, config.data.dir, config.data.splits, config.data.max_train_samples,
                                              config.data.max_eval_samples)) for i, t in enumerate(tasks)
                  if args.task is None or t.name == _pick_task(tasks, args.task)[1].name}
    for name, (index, task, splits) in picked.items():
        adapter = name.replace("-", "_") if config.adapters == "per_task" else None
        for split in [s for s in ("data", "validation", "test") if s in splits]:
            per_task.setdefault(name, {})[split] = evaluate(
                model, tokenizer, kind, task, index, splits[split], config.model.max_length,
                config.model.max_target_length, config.train.eval_batch_size, adapter, uses_task_ids(model))
    results = {"tasks": per_task, "average": averages(per_task)}
    print(table(results))
    return results


def cli_predict(args) -> list:
    config, model, tokenizer, kind, tasks = load_run(args.run_dir)
    index, task = _pick_task(tasks, getattr(args, "task", None))
    examples = read_inputs(task, Path(args.input))
    adapter = task.name.replace("-", "_") if config.adapters == "per_task" else None
    outputs = predict(model, tokenizer, kind, task, index, examples, config.model.max_length,
                      config.model.max_target_length, config.train.eval_batch_size, adapter, uses_task_ids(model))
    handle = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for example, output in zip(examples, outputs):
            record = {**example.fields, "prediction": task.verbalize(output)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            handle.close()
    return outputs


def read_inputs(task, path: Path):
    """Rows to predict: the task's official file format, or any JSONL / TSV / CSV file whose columns
    are the task's keys (e.g. `sentence` for SST-2); labels are not needed."""
    try:
        return load_rows(task, path)
    except PeftlabError as err:
        if not path.exists() or "UTF-8" in str(err):
            raise
    readers = {".jsonl": read_jsonl, ".json": read_jsonl, ".csv": read_csv}
    rows = readers.get(path.suffix, read_tsv)(path, required=task.keys)
    return [Example(task.name, {k: str(row[k]) for k in task.keys}, 0) for _, row in rows]


def cli_plot(args) -> list:
    written = plot_run(args.run_dir)
    for path in written:
        print(path)
    return written
