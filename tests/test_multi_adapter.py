"""The jiant / nlprunners multi-adapter flow: single-task adapters, then a WeightedSum over them that
learns which source helps; its configs load; sources load frozen and leave with the mixer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import peftlab as pl
from peftlab import observe
from peftlab.methods.weighted_sum import WeightedSumConfig
from peftlab.core import attachment_parameters
from tiny import tiny_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "multi_adapter"


def _task(n=32, length=5, seed=0):
    """Label 1 when the row starts with token 7 (6 otherwise): learnable by a small adapter."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 96, (n, length), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[:, 0] = torch.where(labels == 1, 7, 6)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _train(model, batch, steps, lr):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


def _accuracy(model, batch):
    with torch.no_grad():
        return (model(**batch).logits.argmax(-1) == batch["labels"]).float().mean().item()


def test_two_step_flow_the_useful_adapter_gets_the_largest_weight(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("bert")
    data = _task()
    pl.attach(model, pl.Houlsby(reduction_factor=1, init="zero_up"), "useful")    # step 1: single-task
    _train(model, data, steps=80, lr=3e-2)
    assert _accuracy(model, data) >= 0.9
    pl.save(model, tmp_path / "useful", "useful")
    pl.attach(model, pl.Houlsby(reduction_factor=1), "other")                     # an unrelated source
    with torch.no_grad():
        for p in attachment_parameters(model, "other"):
            p.add_(0.3 * torch.randn_like(p))
    pl.save(model, tmp_path / "other", "other")
    fresh = tiny_model("bert")
    config = WeightedSumConfig(adapters=("useful", "other"), sources={"other": str(tmp_path / "other"),
                                                                     "useful": str(tmp_path / "useful")})
    pl.attach(fresh, config, "multi")                                              # step 2: the mix
    assert list(pl.adapters(fresh)) == ["other", "useful", "multi"]
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".parts.multi." in n or n.startswith("peftlab_adapters.multi.")
                         or n.startswith("classifier.")}
    _train(fresh, data, steps=40, lr=5e-2)
    with observe.capture() as seen:
        accuracy = _accuracy(fresh, data)
    assert accuracy >= 0.9
    means = torch.stack([item["weights"] for item in seen.values()]).mean(0)
    labels = next(iter(seen.values()))["labels"]
    assert labels == ["base", "useful", "other"]
    assert means.argmax().item() == 1, dict(zip(labels, means.tolist()))


def test_sources_load_frozen_and_leave_with_the_mixer(tmp_path):
    model = tiny_model("bert")
    for name in ("a", "b"):
        pl.attach(model, pl.Pfeiffer(reduction_factor=2), name)
        with torch.no_grad():
            for p in attachment_parameters(model, name):
                p.add_(0.3 * torch.randn_like(p))
        pl.save(model, tmp_path / name, name)
    pl.attach(model, pl.WeightedSum("a", "b"))
    batch = {"input_ids": torch.randint(3, 96, (2, 5))}
    with torch.no_grad():
        expected = model(**batch).logits
    fresh = tiny_model("bert")
    original = {k: v.clone() for k, v in fresh.state_dict().items()}
    sources = {n: str(tmp_path / n) for n in ("a", "b")}
    with pytest.raises(pl.PeftlabError, match="not found"):
        pl.attach(fresh, WeightedSumConfig(adapters=("a", "b"), sources={**sources, "b": str(tmp_path / "nope")}))
    assert not pl.adapters(fresh) and not hasattr(fresh, "_peftlab")
    pl.attach(fresh, WeightedSumConfig(adapters=("a", "b"), sources=sources), "wsum_a_b")
    assert not any(p.requires_grad for n in "ab" for p in attachment_parameters(fresh, n))
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected, rtol=0, atol=1e-6)
    pl.detach(fresh, "wsum_a_b")
    assert not hasattr(fresh, "_peftlab")
    after = fresh.state_dict()
    assert list(after) == list(original) and all(torch.equal(after[k], v) for k, v in original.items())


@pytest.mark.parametrize("name", ["single_rte", "single_mrpc", "multi_rte"])
def test_the_shipped_multi_adapter_configs_are_valid(name):
    """configs/multi_adapter/ is nlprunners' packaging/adapters.md, translated (docs/seed_configs.md)."""
    from peftlab.train.schema import load_run_config
    config = load_run_config(CONFIGS / f"{name}.yaml")
    method = config.method_config()
    if name == "multi_rte":
        assert isinstance(method, WeightedSumConfig) and method.adapters == ("rte", "mrpc")
        assert method.head_from is None   # the head starts fresh, as nlprunners' multi-adapter's
        assert method.compat == "nlprunners"
    else:
        assert method.method == "houlsby" and config.tasks == (name.split("_")[1],)


def test_the_runner_logs_weighted_sum_weights_and_plot_draws_one_png_per_layer(tmp_path):
    from peftlab.train.logs import LOG, MIXING, RunLog, observe_mixing
    from peftlab.train.plots import plot_run
    model = tiny_model("bert")
    for name in ("rte", "mrpc"):
        pl.attach(model, pl.Pfeiffer(reduction_factor=2), name)
    pl.attach(model, pl.WeightedSum("rte", "mrpc", name="default", num_weight_sets=-1))
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    batch = {"input_ids": torch.randint(3, 96, (3, 5))}
    weights = model.peftlab_adapters["default"].weight_sets.weights
    for step in (10, 20):
        with torch.no_grad():
            weights[:, 1] += 1.0   # as if training moved weight onto the rte branch
        log.write({"kind": "train", "step": step, "loss": 1.0 / step})
        log.write({"step": step, "series": observe_mixing(model, batch)}, MIXING)
    records = [r for r in (tmp_path / MIXING).read_text().splitlines() if r]
    assert len(records) == 2 and (tmp_path / LOG).exists()
    last = __import__("json").loads(records[-1])["series"]
    assert sorted(last) == ["default/encoder.0", "default/encoder.1"]
    assert last["default/encoder.0"]["labels"] == ["base", "rte", "mrpc"]
    weights = last["default/encoder.0"]["weights"]
    assert weights[1] == max(weights) and abs(sum(weights) - 1) < 1e-5
    written = [p.name for p in plot_run(tmp_path)]
    assert "mixing_default_encoder.0.png" in written and "mixing_default_encoder.1.png" in written
    assert (tmp_path / "plots" / "mixing_default_encoder.0.png").stat().st_size > 1000
