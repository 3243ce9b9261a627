"""Fuzzed run configs: every field of every runner section given values of every kind (wrong types,
negatives, NaN, huge, nested junk). `RunConfig.from_dict` either accepts the config or raises one
`PeftlabError` line — never another exception type."""
from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftlab.errors import PeftlabError
from peftlab.train.schema import DataSection, ModelSection, RunConfig, TrainSection

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "no", "epoch", "fp16", "seq2seq", "rte", "linear", "x" * 300, "1e-3", "[1, 2]"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 2), max_size=2),
)
SECTIONS = {"model": ModelSection, "data": DataSection, "train": TrainSection}


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@st.composite
def run_configs(draw):
    config = {"tasks": draw(st.one_of(st.just(["rte"]), st.just(["sst2", "cola"]), JUNK))}
    for section, cls in SECTIONS.items():
        names = draw(st.lists(st.sampled_from(_fields(cls)), max_size=4, unique=True))
        config[section] = {name: draw(JUNK) for name in names}
    for key in draw(st.lists(st.sampled_from(["adapters", "do_train", "init_from", "overwrite", "output_dir",
                                              "description", "method"]), max_size=2, unique=True)):
        config[key] = draw(JUNK)
    return config


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(run_configs())
def test_a_fuzzed_run_config_is_accepted_or_refused_in_one_line(config):
    try:
        RunConfig.from_dict(config)
    except PeftlabError as err:
        assert "\n" not in str(err) and str(err)
