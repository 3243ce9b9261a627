"""Adapter names: one that torch's ModuleDict cannot hold (a Module attribute such as `half`) is a
one-line error, and the model is left as it was."""
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
