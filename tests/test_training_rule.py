"""What trains is what is active: adapters that are attached but not active keep their tensors frozen,
so `trainable_parameters` and any optimizer built from `requires_grad` see only the active ones;
`pl.train_adapter` names the training set explicitly, as AdapterHub's `train_adapter` does."""
from __future__ import annotations

import pytest

import peftlab as pl
from peftlab.core import attachment_parameters
from peftlab.train.optim import param_groups
from peftlab.train.schema import TrainSection
from tiny import tiny_model


def _trains(model, name) -> bool:
    flags = {p.requires_grad for p in attachment_parameters(model, name)}
    assert len(flags) == 1, f"{name}: some tensors train and some do not"
    return flags.pop()


def _count(model, name) -> int:
    return sum(p.numel() for p in attachment_parameters(model, name))


def _head(model) -> int:
    return sum(p.numel() for p in model.classifier.parameters())


def test_attaching_a_second_adapter_freezes_the_first_and_the_optimizer_sees_only_the_second():
    model = tiny_model("bert")
    pl.attach(model, pl.LoRA(r=2), "a")
    pl.attach(model, pl.Houlsby(reduction_factor=4), "b")
    assert not _trains(model, "a") and _trains(model, "b")
    assert pl.trainable_parameters(model)[0] == _count(model, "b") + _head(model)
    optimized = {id(p) for g in param_groups(model, TrainSection()) for p in g["params"]}
    assert not optimized & {id(p) for p in attachment_parameters(model, "a")}
    pl.activate(model, "a")
    assert _trains(model, "a") and not _trains(model, "b")
    pl.deactivate(model)                       # nothing active: nothing trains, the head neither
    assert pl.trainable_parameters(model)[0] == 0


def test_an_adapter_attached_inactive_or_frozen_does_not_train_until_asked():
    model = tiny_model("bert")
    pl.attach(model, pl.LoRA(r=2), "a")
    pl.attach(model, pl.LoRA(r=2), "b", activate=False)
    assert _trains(model, "a") and not _trains(model, "b")
    pl.attach(model, pl.LoRA(r=2), "frozen", trainable=False)
    assert not _trains(model, "frozen") and not _trains(model, "a")
    pl.train_adapter(model, "frozen")          # AdapterHub's call: activates it and unfreezes it
    assert _trains(model, "frozen")


def test_train_adapter_picks_what_trains_inside_an_active_stack():
    model = tiny_model("bert")
    pl.attach(model, pl.Houlsby(reduction_factor=4), "lang")
    pl.attach(model, pl.Houlsby(reduction_factor=4), "task")
    pl.activate(model, pl.Stack("lang", "task"))
    assert _trains(model, "lang") and _trains(model, "task")
    pl.train_adapter(model, "task")            # MAD-X: the language adapter stays fixed
    assert model._peftlab.active == pl.Stack("lang", "task")
    assert not _trains(model, "lang") and _trains(model, "task")
    pl.train_adapter(model)                    # back to the default rule
    assert _trains(model, "lang") and _trains(model, "task")
    with pytest.raises(pl.PeftlabError, match="no adapter named 'tsak'.*did you mean 'task'"):
        pl.train_adapter(model, "tsak")


def test_detaching_a_named_training_adapter_leaves_the_rule_consistent():
    model = tiny_model("bert")
    pl.attach(model, pl.LoRA(r=2), "a")
    pl.attach(model, pl.LoRA(r=2), "b")
    pl.train_adapter(model, "a", "b")
    assert _trains(model, "a") and _trains(model, "b")
    pl.detach(model, "b")
    assert _trains(model, "a")
    pl.attach(model, pl.LoRA(r=2), "c", activate=False)
    assert not _trains(model, "c")             # the training set is still the named one
    pl.detach(model, "a")
    assert not _trains(model, "c")             # ... and once empty, the rule is the default again
    pl.activate(model, "c")
    assert _trains(model, "c")
    pl.detach(model, "c")
    assert all(p.requires_grad for p in model.parameters())   # the model's own flags, as before attach


def test_train_adapter_without_activating_keeps_the_active_setup():
    """The runner's per-task adapters: each batch activates one, every one trains over the run."""
    model = tiny_model("bert")
    pl.attach(model, pl.LoRA(r=2), "a")
    pl.attach(model, pl.LoRA(r=2), "b")
    pl.train_adapter(model, "a", "b", activate=False)
    assert model._peftlab.active == ("b",)
    assert _trains(model, "a") and _trains(model, "b")
    pl.activate(model, "a")                    # an explicit training set outlives activation
    assert _trains(model, "a") and _trains(model, "b")


def test_summary_says_where_prompt_prefix_and_intrinsic_adapters_act():
    model = tiny_model("t5")
    pl.attach(model, pl.PromptTuning(length=4), "p")
    pl.attach(model, pl.PrefixTuning(prefix_length=2, mlp_hidden=4), "x")
    pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=300), "s")
    pl.attach(model, pl.LoRA(), "l")
    rows = {line.split()[0]: line for line in pl.summary(model).splitlines()[2:-1]}
    assert "1 input prompt " in rows["p"]
    assert "4 attention layers" in rows["x"]            # 2 encoder + 2 decoder self-attention
    assert "47 projected tensors" in rows["s"]
    assert "8 modules" in rows["l"]
    assert "0 modules" not in pl.summary(model)
