"""The run config: typed dataclasses, validated before any model loads.

A config file (JSON or YAML) is a mapping with the sections below; unknown keys raise an error naming
the key and the closest valid one. The seeds' own flat configs (Compacter, ATTEMPT) are translated
first (see the `peftlab.seeds` package). Dotted `key=value` overrides are applied to the mapping before validation.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import CheckedConstruction, closest, coerce
from ..errors import PeftlabError
from ..registry import config_from_dict
from ..tasks import get_task
from ..tasks.readers import read_text
from .. import seeds
from .yaml_config import yaml_load


@dataclass
class Section(metaclass=CheckedConstruction):
    """A config section: fields are coerced to their annotations; `check()` adds cross-field rules."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = hints[f.name]
            if isinstance(tp, type) and issubclass(tp, Section) and not isinstance(value, tp):
                value = tp.from_dict(value, f"{self._where()}.{f.name}" if self._where() else f.name)
            elif not (isinstance(tp, type) and issubclass(tp, Section)):
                value = coerce(value, tp, f"{self._where()}.{f.name}".lstrip("."))
            setattr(self, f.name, value)
        self.check()

    def _where(self) -> str:
        return getattr(self, "_section", "")

    def check(self) -> None:
        pass

    @classmethod
    def from_dict(cls, data, where: str = ""):
        if not isinstance(data, dict):
            raise PeftlabError(f"{where or 'config'}: expected a mapping, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                full = f"{where}.{key}" if where else key
                raise PeftlabError(f"unknown config key '{full}'{closest(str(key), names)}")
        obj = cls.__new__(cls)
        obj._section = where
        obj.__init__(**data)
        return obj

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Section) else _plain(value)
        return out


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def require(condition: bool, message: str) -> None:
    if not condition:
        raise PeftlabError(message)


@dataclass
class ModelSection(Section):
    name: str = "minilm"                  # hub id, local directory, or offline package alias
    head: Literal["auto", "classification", "seq2seq", "causal"] = "auto"
    tokenizer: str | None = None          # default: the model's own
    max_length: int = 128                 # source tokens (the seeds' max_source_length)
    max_target_length: int = 16           # target tokens, and the generation budget at evaluation
    resize_vocab: int | None = None       # embedding rows after loading (the seeds' T5: len(tokenizer) 32,100)
    dropout: float | None = None          # the base model's hidden and attention dropout; None: its config's
    train_new_embeddings: bool = False    # with resize_vocab growing it: the new rows train (kernel-adapters)
    eval_max_new_tokens: int | None = None    # generation budget of the evaluations during training
    final_max_new_tokens: int | None = None   # of the final validation and test (None: as during training)

    def check(self):
        require(self.max_length > 0 and self.max_target_length > 0, "model: lengths must be positive")
        require(self.resize_vocab is None or self.resize_vocab > 0,
                f"model.resize_vocab must be positive, got {self.resize_vocab}")
        require(self.dropout is None or 0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")
        for key in ("eval_max_new_tokens", "final_max_new_tokens"):
            require(getattr(self, key) is None or getattr(self, key) > 0, f"model.{key} must be positive")
        require(not self.train_new_embeddings or self.resize_vocab is not None,
                "model.train_new_embeddings trains the rows model.resize_vocab adds: set resize_vocab")


@dataclass
class DataSection(Section):
    dir: str | None = None                # local task files; None: the hub through `datasets`
    splits: Literal["paper", "official", "seq2seq"] = "paper"   # seq2seq: the seeds' split_validation_test
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    sampling: Literal["proportional", "temperature"] = "proportional"
    temperature: float = 1.0              # T in p_i ~ n_i^(1/T) (ATTEMPT, Compacter's multitask sampler)
    mixing: Literal["mixed", "per_task"] = "mixed"   # mixed-task batches, or one task per batch
    task_prefix: bool = True              # text-to-text sources start with the task name (DESIGN §5)
    prefixes: dict = field(default_factory=dict)   # task -> the prefix text, where not the task's name
    # a seed code base's own text or token layout (seed_configs.md): compacter / attempt text quirks,
    # kernel-adapters' WebNLG tokens and token types
    text_compat: Literal["compacter", "attempt", "kernel-adapters"] | None = None
    pad_to_max_length: bool = False       # every row padded to model.max_length (not to the batch's longest)
    metrics_from: str | None = None       # score every task with this task's metrics (ATTEMPT's eval scripts)
    # MNLI: also score the whole mismatched dev set at the end, as split "validation_mismatched"
    # (kernel-adapters' run_glue.py:558-565)
    report_mismatched: bool = False

    def check(self):
        require(self.temperature > 0, f"data.temperature must be positive, got {self.temperature}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key} must be positive, got {value}")


@dataclass
class ParamGroup(Section):
    pattern: str = ""                     # regular expression on parameter names
    learning_rate: float | None = None
    weight_decay: float | None = None


@dataclass
class TrainSection(Section):
    epochs: float = 3.0
    max_steps: int | None = None          # overrides epochs
    batch_size: int = 32                  # global: over processes and accumulation steps
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    label_smoothing: float = 0.0          # on the training loss (HF's label_smoothing_factor; kernel-adapters)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # fp16 needs a GPU; on a CPU it runs as bf16
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    schedule: Literal["linear", "linear_from_warmup", "constant"] = "linear"
    lr_end: float = 0.0                   # where the linear decay ends (HF's polynomial decay, power 1)
    optimizer: Literal["adamw", "adamw_transformers"] = "adamw"   # torch's, or transformers' 4.x one (seeds)
    scheduler_step_first: bool = False    # nlprunners: the schedule advances before each update
    fractional_warmup: bool = False       # warmup_ratio * steps kept fractional, not rounded down
    eval_offset: int = 0                  # evaluate when (step + eval_offset) % eval_steps == 0 (nlprunners: 1)
    evaluate_last_step: bool = True       # false: the last step is evaluated only when it is an eval step (HF)
    seed: int = 42
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    eval_steps: int = 500
    log_steps: int = 10
    early_stopping_patience: int | None = None   # evaluations without improvement before stopping
    select_on: str | None = None          # a task whose validation metric alone picks the best checkpoint
    select_metric: Literal["metric", "loss"] = "metric"   # loss: the lowest validation loss (no generation)
    param_groups: tuple[dict, ...] = ()   # [{pattern, learning_rate, weight_decay}]: first match wins
    # nlprunners' runscript.py quirks (nlpr/shared/runner.py:271, 280; model_setup.py:51-54): the frozen
    # base's gradients, computed and never zeroed, enter the clipping norm (and are scaled with it);
    # parameters whose names start with a `listed_twice` prefix are in the optimizer twice: two updates a step
    clip_frozen_gradients: bool = False
    listed_twice: tuple[str, ...] = ()
    tensorboard: bool = True
    progress_bar: bool = True
    threads: int | None = None            # torch CPU threads per process; None: torch's default
    keep_freed_memory: bool = True        # glibc: reuse freed memory across steps (train/allocator.py)
    keep_last: int = 1                    # "last" checkpoints kept (plus best); older ones as step-N

    def check(self):
        require(self.batch_size > 0 and self.eval_batch_size > 0, "train: batch sizes must be positive")
        require(self.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps must be >= 1")
        require(self.batch_size % self.gradient_accumulation_steps == 0,
                f"train.batch_size {self.batch_size} is not a multiple of gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}")
        require(self.epochs > 0 or (self.max_steps or 0) > 0, "train: give epochs > 0 or max_steps > 0")
        require(self.max_steps is None or self.max_steps > 0, f"train.max_steps must be positive, got {self.max_steps}")
        require(0 <= self.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        require(0 <= self.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        require(self.eval_steps > 0 and self.log_steps > 0, "train: eval_steps and log_steps must be positive")
        require(self.threads is None or self.threads > 0, f"train.threads must be positive, got {self.threads}")
        require(self.keep_last >= 1, f"train.keep_last must be >= 1, got {self.keep_last}")
        require(all(0 <= b < 1 for b in self.adam_betas), f"train.adam_betas must be in [0, 1), got "
                                                          f"{list(self.adam_betas)}")
        require(self.adam_epsilon > 0, f"train.adam_epsilon must be positive, got {self.adam_epsilon}")
        require(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        require(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
                f"train.early_stopping_patience must be >= 1 (or null), got {self.early_stopping_patience}")
        require(self.max_grad_norm is None or self.max_grad_norm > 0,
                f"train.max_grad_norm must be positive (or null: no clipping), got {self.max_grad_norm}")
        require(self.learning_rate > 0, f"train.learning_rate must be positive, got {self.learning_rate}")
        require(0 <= self.lr_end < self.learning_rate,
                f"train.lr_end {self.lr_end} must be in [0, learning_rate {self.learning_rate})")
        require(not self.listed_twice or self.optimizer == "adamw_transformers",
                "train.listed_twice needs train.optimizer: adamw_transformers (torch's AdamW refuses a tensor twice)")
        self.param_groups = tuple(ParamGroup.from_dict(g, f"train.param_groups[{i}]").to_dict()
                                  for i, g in enumerate(self.param_groups))
        for index, group in enumerate(self.param_groups):
            _check_regex(group["pattern"])
            for key in ("learning_rate", "weight_decay"):
                value = group[key]
                require(value is None or value >= 0,      # 0 keeps a group as it is: a way to freeze it
                        f"train.param_groups[{index}].{key} must be >= 0, got {value}")


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise PeftlabError(f"train.param_groups: bad pattern {pattern!r} ({err})") from None


@dataclass
class RunConfig(Section):
    tasks: tuple[str, ...] = ()
    do_train: bool = True                 # false: evaluate the model as built (and `init_from`), train nothing
    method: dict = field(default_factory=lambda: {"method": "houlsby"})
    adapters: Literal["shared", "per_task"] = "shared"   # one adapter, or one per task (Compacter)
    init_from: str | None = None          # a saved adapter dir whose weights start this run (SPoT)
    output_dir: str = "runs/default"
    overwrite: bool = False
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    description: str = ""

    def check(self):
        require(len(self.tasks) > 0, "tasks: name at least one task, e.g. tasks: [sst2]")
        self.tasks = tuple(get_task(t).name for t in self.tasks)
        require(len(set(self.tasks)) == len(self.tasks), f"tasks: {list(self.tasks)} names a task twice")
        method = config_from_dict(self.method)   # validates the method config now, before any model loads
        routed = getattr(method, "tasks", None)
        if routed:       # a method routing by task id (ATTEMPT): its task order must be the run's
            names = tuple(get_task(t).name for t in routed)
            require(names == self.tasks, f"method.tasks {list(routed)} must list the run's tasks in order: "
                                         f"{list(self.tasks)}")
        prefixed = {get_task(t).name for t in self.data.prefixes}
        require(prefixed <= set(self.tasks), f"data.prefixes names {sorted(prefixed - set(self.tasks))}, "
                                             f"not a task of this run")
        self.data.prefixes = {get_task(t).name: str(v) for t, v in self.data.prefixes.items()}
        if self.data.metrics_from is not None:
            self.data.metrics_from = get_task(self.data.metrics_from).name
        if self.train.select_on is not None:
            self.train.select_on = get_task(self.train.select_on).name
            require(self.train.select_on in self.tasks, f"train.select_on '{self.train.select_on}' is not a task "
                                                        f"of this run: {list(self.tasks)}")
        if self.adapters == "per_task":
            require(self.data.mixing == "per_task", "adapters: per_task needs data.mixing: per_task "
                                                    "(each batch must come from one task)")

    def method_config(self):
        return config_from_dict(self.method)

    def task_list(self) -> list:
        """The run's tasks, formatted as the config says (with or without the task-name prefix)."""
        def prefix(task):
            return self.data.prefixes.get(task, True) if self.data.task_prefix else False
        metrics = get_task(self.data.metrics_from).metrics if self.data.metrics_from else None
        return [replace(get_task(t), prefix=prefix(t), text_compat=self.data.text_compat,
                        metrics=metrics or get_task(t).metrics) for t in self.tasks]


def read_config_file(path) -> dict:
    """A JSON or YAML mapping from `path`; a bad file raises one line naming it."""
    path = Path(path)
    text = read_text(path)
    try:
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml_load(text)
        except PeftlabError as err:
            raise PeftlabError(f"{path}: {err}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        line = getattr(err, "lineno", None) or getattr(getattr(err, "problem_mark", None), "line", -1) + 1
        raise PeftlabError(f"{path}:{line}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}") from None
    except (ValueError, RecursionError) as err:   # JSON: an integer of thousands of digits, nesting too deep
        if isinstance(err, PeftlabError):
            raise
        raise PeftlabError(f"{path}: not readable ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise PeftlabError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides) -> dict:
    """`train.learning_rate=1e-3` style overrides; values are parsed as YAML scalars/lists."""
    data = json.loads(json.dumps(data))
    for item in overrides or ():
        if "=" not in item:
            raise PeftlabError(f"override {item!r} is not key=value (e.g. train.learning_rate=1e-3)")
        key, raw = item.split("=", 1)
        value: Any = yaml_load(raw) if raw.strip() else None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PeftlabError(f"override {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_run_configs(path=None, overrides=(), argv=None) -> list[RunConfig]:
    """The run(s) a config names: a peftlab YAML/JSON, or a seed original (a code base's JSON, a run
    script with several commands, or a command line `argv`), each with the overrides on top."""
    return [_checked(data, overrides, origin) for data, origin in run_mappings(path, argv)]


def _checked(data: dict, overrides, origin: dict) -> RunConfig:
    """A bad value that came from a seed original is named by its original key too."""
    try:
        return RunConfig.from_dict(apply_overrides(data, overrides))
    except PeftlabError as err:
        text = str(err)
        for dotted, original in origin.items():
            if text.startswith(dotted) or f"'{dotted}" in text or f"{dotted}:" in text:
                raise PeftlabError(f"{text} (from the original's {original})") from None
        raise


def run_mappings(path=None, argv=None) -> list[tuple[dict, dict]]:
    """(run config mapping, {dotted key: the original key it came from}) per run."""
    if argv:
        return [(t.config, t.origin) for t in seeds.translate(None, argv=argv)]
    path = Path(path)
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        return [(t.config, t.origin) for t in seeds.translate(path)]
    data = read_config_file(path)
    if seeds.is_original(data):      # read once: translated from the mapping, paths against its code root
        found = seeds.translate_mapping(data, str(path), seeds.code_root(path, "configs"))
        return [(found.config, found.origin)]
    return [(data, {})]


def load_run_config(path, overrides=()) -> RunConfig:
    runs = load_run_configs(path, overrides)
    if len(runs) != 1:
        raise PeftlabError(f"{path}: holds {len(runs)} runs; `peftlab train` runs them one after another")
    return runs[0]


# what a resumed run may change: how long it runs and how it reports, never what it computes
SAFE_ON_RESUME = {"overwrite", "description", "data.dir", "train.epochs", "train.max_steps", "train.eval_steps",
                  "train.log_steps", "train.progress_bar", "train.tensorboard", "train.threads", "train.keep_last",
                  "train.early_stopping_patience", "train.keep_freed_memory"}


def check_resumable(saved_path: Path, config: RunConfig) -> None:
    """A resumed run continues the saved one: refuse, naming the first key, a config that differs in
    anything but the keys of SAFE_ON_RESUME."""
    saved = _flat(json.loads(read_text(saved_path))) if Path(saved_path).is_file() else {}
    if not saved:
        raise PeftlabError(f"{saved_path}: the run's config is missing; cannot check what --resume continues")
    now = _flat(config.to_dict())
    for key in sorted(set(saved) | set(now)):
        if key not in saved:    # a field newer than the saved run: it ran with that field's default
            continue
        if key not in SAFE_ON_RESUME and saved.get(key) != now.get(key):
            raise PeftlabError(f"--resume: {key} is {now.get(key)!r} here but {saved.get(key)!r} in the saved run; "
                               f"a resumed run may change only {', '.join(sorted(SAFE_ON_RESUME))}")


def _flat(data, prefix: str = "") -> dict:
    out = {}
    for key, value in (data.items() if isinstance(data, dict) else []):
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("method", "prefixes"):
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out
