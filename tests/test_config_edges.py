"""Edges of what attach and the configs accept: an adapter name torch's ModuleDict cannot hold (a Module
attribute such as `half`), and prompt-tuning values no init could use, are each a one-line error that
leaves the model as it was."""
from __future__ import annotations

import pytest
import torch

import peftlab as pl
from tiny import tiny_model


@pytest.mark.parametrize("name", ["half", "forward", "training", "to"])
def test_a_torch_module_attribute_name_is_refused_in_one_line(name):
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pl.PeftlabError, match="name of a torch Module method or attribute") as err:
        pl.attach(model, pl.LoRA(r=2), name)
    assert "\n" not in str(err.value) and not hasattr(model, "_peftlab")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    pl.attach(model, pl.LoRA(r=2), f"{name}_adapter")      # the name with a suffix is fine


@pytest.mark.parametrize("field, value", [("vocab_range", 0), ("seed", -1), ("init_token_ids", (3, -2))])
def test_prompt_tuning_values_that_could_never_be_used_are_refused_whatever_the_init(field, value):
    with pytest.raises(pl.PeftlabError, match=f"PromptTuning.{field}") as err:
        pl.PromptTuning(length=4, **{field: value})
    assert "\n" not in str(err.value)
