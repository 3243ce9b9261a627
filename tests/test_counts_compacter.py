"""Trainable-parameter counts of the Compacter family and Intrinsic SAID on the T5-base config
(Compacter paper, Table 1), built on the meta device (no weights, no memory)."""
from __future__ import annotations

import pytest

import peftlab as pl
from peftlab.models import build_from_config, load_config
from peftlab.params_table import paper_rows

BASE = 222_882_048
SETTINGS = dict(reduction_factor=32, unfreeze_layer_norms=True)   # k = 24; the 62 T5 layer norms train
EXPECTED = [
    (pl.PHMAdapter(phm_dim=12, **SETTINGS), 398_976, 0.179),
    (pl.Compacter(phm_dim=4, **SETTINGS), 161_728, 0.073),
    (pl.CompacterPlusPlus(phm_dim=4, **SETTINGS), 104_704, 0.047),
    (pl.LowRankAdapter(**SETTINGS), 161_664, 0.073),
    (pl.IntrinsicSAID(intrinsic_dim=20_000), 20_000, 0.009),
]


@pytest.fixture(scope="module")
def t5_base():
    return build_from_config(load_config("t5-base"), meta=True)


def _count(model, config) -> int:
    pl.attach(model, config, name="probe")
    try:
        return pl.trainable_parameters(model)[0]
    finally:
        pl.detach(model, "probe")


@pytest.mark.parametrize("config,count,percent", EXPECTED, ids=[c.method for c, _, _ in EXPECTED])
def test_counts_match_the_paper(t5_base, config, count, percent):
    assert pl.trainable_parameters(t5_base)[1] == BASE
    trainable = _count(t5_base, config)
    assert trainable == count
    assert round(100 * trainable / BASE, 3) == percent


def test_said_spends_one_entry_per_tensor_on_lambda(t5_base):
    pl.attach(t5_base, pl.IntrinsicSAID(intrinsic_dim=20_000), name="said")
    try:
        projector = t5_base.peftlab_adapters["said"].intrinsic
        tensors = len({id(p) for p in t5_base.parameters() if not p.requires_grad})
        assert projector.said_lambda.numel() == tensors
        assert projector.z.numel() == 20_000 - tensors
    finally:
        pl.detach(t5_base, "said")


def test_the_params_table_rows_carry_these_counts(t5_base):
    """`peftlab params --model t5-base` prints these rows: each row's config gives its paper count."""
    rows = {r["config"]["method"]: r for r in paper_rows("t5-base")}
    for config, count, percent in EXPECTED:
        row = rows[config.method]
        assert (row["paper_count"], row["paper_percent"]) == (count, percent)
        assert _count(t5_base, pl.config_from_dict(row["config"])) == count
