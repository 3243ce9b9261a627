"""The Compacter paper's parameter column on T5-base (DESIGN §4), from a config alone (meta device)."""
from __future__ import annotations

import pytest

from peftlab.cli import main
from peftlab.params_table import count, paper_rows
from peftlab.registry import config_from_dict

T5_BASE_PARAMETERS = 222_882_048
CORE_ROWS = {"Adapter (Houlsby)": 1_855_104, "Pfeiffer (Compacter: after self-attention)": 951_360,
             "AdapterDrop (layers 5-11)": 1_101_984, "BitFit": 280_932}


@pytest.mark.parametrize("row", paper_rows("t5-base"), ids=lambda r: r["label"])
def test_t5_base_paper_rows(row):
    trainable, base = count("t5-base", config_from_dict(row["config"]))
    assert base == T5_BASE_PARAMETERS
    assert trainable == row["paper_count"]
    assert round(100 * trainable / base, 3) == row["paper_percent"]


def test_core_rows_are_in_the_table():
    labels = {r["label"]: r["paper_count"] for r in paper_rows("t5-base")}
    for label, expected in CORE_ROWS.items():
        assert labels[label] == expected


def test_params_cli_prints_the_table(capsys):
    assert main(["params", "--model", "t5-base"]) == 0
    out = capsys.readouterr().out
    assert "222,882,048" in out
    for expected in CORE_ROWS.values():
        assert f"{expected:,}" in out


def test_params_cli_for_one_method_on_a_preset(capsys):
    assert main(["params", "--model", "gpt2", "--method", "lora"]) == 0
    # LoRA r=8 on GPT-2's fused c_attn (768 -> 2304) in 12 layers: 12 * 8 * (768 + 2304)
    assert "294,912" in capsys.readouterr().out


def test_params_cli_unknown_model_is_one_line_exit_2(capsys):
    assert main(["params", "--model", "no/such-model-here", "--method", "lora"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no/such-model-here" in err
