"""Every shipped config parses and runs one training step on a tiny offline model of its architecture.

Configs name hub models (t5-base, gpt2, roberta-base) or the offline MiniLM; here each runs on a tiny
random model of the same architecture, on tiny task files in the official formats. Configs that start
from another run's adapters (SPoT, ATTEMPT targets, the multi-adapter WeightedSum) get the outputs of
the shipped configs that produce them, run the same way first.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.errors import PeftlabError
from peftlab.train.loop import Trainer
from peftlab.train.schema import RunConfig, apply_overrides, read_config_file
from peftlab.train.seeds import translate_if_seed
from test_train_support import tiny_model_dir, write_task_files

CONFIGS = Path(__file__).parent.parent / "configs"
ARCHS = (("t5", "t5"), ("bart", "bart"), ("gpt2", "gpt2"), ("roberta", "roberta"), ("llama", "llama"),
         ("smollm", "llama"))


def arch_of(model_name: str) -> str:
    name = model_name.lower()
    return next((arch for key, arch in ARCHS if key in name), "bert")    # MiniLM, BERT


def _sources(method: dict) -> list[str]:
    sources = method.get("sources") or []
    return list(sources.values()) if isinstance(sources, dict) else list(sources)


def shipped() -> list[Path]:
    paths = sorted(p for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    mapping = {p: translate_if_seed(read_config_file(p)) for p in paths}
    return sorted(paths, key=lambda p: (bool(_sources(mapping[p].get("method", {}))), str(p)))


class Runs:
    """Runs configs on tiny models and remembers where each config's outputs went."""

    def __init__(self, tmp: Path):
        self.tmp, self.outputs = tmp, {}
        self.data = write_task_files(tmp / "data")

    def run(self, path: Path) -> dict:
        data = translate_if_seed(read_config_file(path))
        original_output = data.get("output_dir", "runs/default")
        model = data.get("model", {}).get("name", "minilm")
        data["method"] = self._rewire(dict(data.get("method", {"method": "houlsby"})))
        if "reduction_factor" in data["method"]:
            # hidden 96 / 4 = 24: a bottleneck as on T5-base (768 / 32), divisible by PHM's n = 4 and 12
            data["method"]["reduction_factor"] = 4
        for key in ("layers", "encoder_layers", "decoder_layers"):
            if data["method"].get(key):      # e.g. AdapterDrop's layers 5-11 of 12: the upper of 2 here
                data["method"][key] = [1]
        tiny = tiny_model_dir(arch_of(model), self.tmp / "models", width=96)
        overrides = [f"model.name={tiny}", "model.tokenizer=",
                     f"data.dir={self.data}", "data.splits=official", "data.max_train_samples=4",
                     "data.max_eval_samples=2", "train.max_steps=1", "train.eval_strategy=steps",
                     "train.eval_steps=1", "train.batch_size=2", "train.gradient_accumulation_steps=1",
                     "train.eval_batch_size=2", "train.tensorboard=false", "train.progress_bar=false",
                     "model.max_length=24", "model.max_target_length=4", "overwrite=true",
                     f"output_dir={self.tmp / 'runs' / path.stem}"]
        try:
            config = RunConfig.from_dict(apply_overrides(data, overrides))
        except PeftlabError as err:
            if "unknown method" in str(err):
                pytest.skip(f"{path.name}: method not registered yet ({err})")
            raise
        results = Trainer(config).run()
        self.outputs[original_output.rstrip("/")] = Path(config.output_dir)
        return results

    def _rewire(self, method: dict) -> dict:
        """Point `sources` at the tiny runs of the configs that produce them."""
        every = _sources(method)

        def local(path: str) -> str:
            run_dir, _, rest = path.partition("/adapter/")
            producer = _producer(run_dir)
            if producer is None:      # e.g. ATTEMPT's other source tasks: stand in with a shipped one
                return local(next(s for s in every if _producer(s.partition("/adapter/")[0])))
            if run_dir not in self.outputs:
                self.run(producer)
            return str(self.outputs[run_dir] / "adapter" / rest)

        sources = method.get("sources")
        if isinstance(sources, dict):
            method["sources"] = {name: local(p) for name, p in sources.items()}
        elif sources:
            method["sources"] = [local(p) for p in sources]
        return method


def _producer(run_dir: str) -> Path | None:
    return next((p for p in shipped() if translate_if_seed(read_config_file(p)).get("output_dir") == run_dir), None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("configs"))


def test_the_configs_are_there():
    names = {str(p.relative_to(CONFIGS)) for p in shipped()}
    compacter = {f"compacter/{n}.json" for n in ("full_finetuning", "adapter", "pfeiffer", "adapterdrop", "low_rank",
                                                   "prompt_tuning_random", "prompt_tuning_vocab", "intrinsic_said",
                                                   "bitfit", "phm_adapter", "compacter", "compacter++")}
    assert compacter | {"quickstart.yaml", "attempt/source_prompt_mnli.json", "attempt/target_cb.json",
                        "attempt/multitask_superglue.json", "spot/source_mnli.yaml", "spot/target_rte.yaml",
                        "kernel/gpt2_e2e_kernel_mix.yaml", "kernel/roberta_glue_kernel_mix.yaml"} <= names


@pytest.mark.parametrize("path", shipped(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_runs_one_step_on_a_tiny_model(runs, path):
    config = RunConfig.from_dict(translate_if_seed(read_config_file(path)))   # as shipped
    assert config.tasks
    results = runs.run(path)
    assert results["train"]["steps"] == 1 and results["trainable"] > 0
    assert set(results["tasks"]) == set(config.tasks)
