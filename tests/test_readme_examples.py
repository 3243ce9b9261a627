"""The README's composition lines run as written (on a tiny model)."""
import torch

import peftlab as pl
from tiny import tiny_batch, tiny_model


def test_readme_composition_lines_run():
    model = tiny_model("bert")
    for name in ("lang_de", "task", "rte", "mrpc", "sst2", "a", "b"):
        pl.attach(model, pl.LoRA(r=2, train_head=False) if name in ("a", "b") else pl.Pfeiffer(reduction_factor=4),
                  name=name)
    batch = {k: v for k, v in tiny_batch("bert", batch=3).items() if k != "labels"}
    pl.activate(model, pl.Stack("lang_de", "task"))
    pl.attach(model, pl.Fuse("rte", "mrpc", "sst2"))
    pl.attach(model, pl.WeightedSum("rte", "mrpc", mode="softmax"))
    with torch.no_grad():
        assert model(**batch).logits.shape[0] == 3
    pl.deactivate(model)
    with torch.no_grad():
        model(**batch, adapter_names=["rte", "mrpc", "rte"])
    pl.activate(model, pl.BatchSplit("a", "b", sizes=[2, 1]))
    pl.activate(model, pl.ParallelBlock("a", "b"))
    pl.attach(model, pl.Average("a", "b", weights=[0.5, 0.5], name="avg"))
    assert "avg" in pl.adapters(model)
