"""The seeds' training-loop quirks, reproduced. nlprunners' runscript.py: the frozen base's gradients, never
zeroed, enter the clipping norm (nlpr/shared/runner.py:271, 280: `train.clip_frozen_gradients`), and
classifier.dense, listed twice in the optimizer, is updated twice a step (model_setup.py:51-54:
`train.listed_twice`), each checked against the reference loop written out with plain torch.
kernel-adapters' NLG train.py: the old embedding rows count in the clipping before their gradient is zeroed."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from peftlab.errors import PeftlabError
from peftlab.train.frozen_grads import FrozenGradients
from peftlab.train.optim import TransformersAdamW, clip_gradients, gradient_norm, param_groups
from peftlab.train.schema import RunConfig, TrainSection
from test_train_support import tiny_run_config

TRAINED = ("2.weight", "2.bias")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(4)]


def test_frozen_gradients_pile_up_and_clip_as_the_reference_loop_does():
    reference, ours = _net(), _net()
    named = dict(reference.named_parameters())
    ref_opt = TransformersAdamW([named[n] for n in TRAINED], lr=0.1)        # the base keeps requires_grad
    for name, p in ours.named_parameters():
        p.requires_grad_(name in TRAINED)
    frozen = FrozenGradients(ours, enabled=True)
    our_opt = TransformersAdamW([p for p in ours.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy
    for x, y in _batches():
        loss(reference(x), y).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)        # runner.py:271
        ref_opt.step()
        ref_opt.zero_grad()                                                  # runner.py:280: the optimizer's only
        with frozen.recording():
            loss(ours(x), y).backward()
        trained = [p for p in ours.parameters() if p.requires_grad]
        norm = gradient_norm(trained, frozen.tensors())
        clip_gradients(trained, 0.05, norm)
        frozen.scale(0.05, norm)
        our_opt.step()
        our_opt.zero_grad(set_to_none=True)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p, named[name], rtol=0, atol=1e-7)
        assert p.grad is None and not p.requires_grad or name in TRAINED
    torch.testing.assert_close(frozen.sums["0.weight"], named["0.weight"].grad, rtol=0, atol=1e-7)
    # without the frozen sums the run ends elsewhere: the quirk matters
    plain = _net()
    for name, p in plain.named_parameters():
        p.requires_grad_(name in TRAINED)
    opt = TransformersAdamW([p for p in plain.parameters() if p.requires_grad], lr=0.1)
    for x, y in _batches():
        loss(plain(x), y).backward()
        torch.nn.utils.clip_grad_norm_([p for p in plain.parameters() if p.requires_grad], 0.05)
        opt.step()
        opt.zero_grad()
    assert not torch.allclose(dict(plain.named_parameters())["2.weight"], named["2.weight"], atol=1e-4)


def test_a_parameter_listed_twice_is_updated_twice_per_step():
    model = _net()
    train = TrainSection.from_dict({"optimizer": "adamw_transformers", "listed_twice": ["2."], "learning_rate": 0.1})
    reference = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="duplicate parameters"):     # torch's word on it; the point here
        optimizer = TransformersAdamW(param_groups(model, train), lr=0.1)
        ref_opt = TransformersAdamW(list(reference.parameters()) + list(reference[2].parameters()), lr=0.1)
    for x, y in _batches()[:2]:
        for m, opt in ((model, optimizer), (reference, ref_opt)):
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            opt.zero_grad()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert optimizer.state[model[2].weight]["step"] == 4 and optimizer.state[model[0].weight]["step"] == 2


def test_listed_twice_needs_transformers_adamw_and_a_matching_name():
    with pytest.raises(PeftlabError, match="needs train.optimizer: adamw_transformers"):
        TrainSection.from_dict({"listed_twice": ["classifier.dense."]})
    train = TrainSection.from_dict({"optimizer": "adamw_transformers", "listed_twice": ["nothing."]})
    with pytest.raises(PeftlabError, match="no trained parameter starts with"):
        param_groups(_net(), train)


def test_a_resumed_run_keeps_the_frozen_sums(tmp_path):
    """The sums are part of the checkpoint: 2 steps, then --resume to 4, ends where 4 straight steps end."""
    from peftlab.train.loop import Trainer
    train = {"optimizer": "adamw_transformers", "clip_frozen_gradients": True, "listed_twice": ["classifier.dense."],
             "max_grad_norm": 0.01, "eval_strategy": "no", "batch_size": 4, "learning_rate": 0.05, "schedule": "constant"}
    runs = {}
    for name, steps in (("straight", [4]), ("resumed", [2, 4])):
        for k, max_steps in enumerate(steps):
            config = tiny_run_config(tmp_path / name, arch="roberta", method={"method": "houlsby", "reduction_factor": 4},
                                     train={**train, "max_steps": max_steps})
            trainer = Trainer(RunConfig.from_dict(json.loads(json.dumps(config))), resume=k > 0)
            trainer.run()
        runs[name] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        assert trainer.frozen.sums and all(torch.isfinite(t).all() for t in trainer.frozen.sums.values())
    for name, value in runs["straight"].items():
        assert torch.equal(value, runs["resumed"][name]), name


def test_kernel_adapters_clips_with_the_old_embedding_rows_then_zeroes_them(tmp_path, monkeypatch):
    """kernel-adapters' train.py:434 clips over the whole tied embedding's gradient, then 438-444 zero the
    checkpoint's rows: the norm counts them, and still only the new rows move."""
    from peftlab.train import loop
    from peftlab.train.loop import Trainer
    seen = []

    def clip(parameters, max_norm, norm):
        embedding = next(p for p in parameters if p.shape[0] == 272)
        seen.append((float(norm), float(gradient_norm(parameters)), float(embedding.grad[:256].abs().sum())))
        clip_gradients(parameters, max_norm, norm)
    monkeypatch.setattr(loop, "clip_gradients", clip)
    config = tiny_run_config(tmp_path, arch="gpt2", task="e2e", method={"method": "lora", "r": 2},
                             model={"resize_vocab": 272, "train_new_embeddings": True, "max_target_length": 8},
                             train={"max_steps": 2, "eval_strategy": "no", "max_grad_norm": 1e-3})
    trainer = Trainer(RunConfig.from_dict(config))
    before = trainer.model.get_input_embeddings().weight.detach().clone()
    trainer.run()
    after = trainer.model.get_input_embeddings().weight.detach()
    assert len(seen) == 2 and all(old > 0 and norm == pytest.approx(total) for norm, total, old in seen)
    assert torch.equal(after[:256], before[:256]) and not torch.equal(after[256:], before[256:])
