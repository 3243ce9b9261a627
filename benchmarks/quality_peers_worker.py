"""The worker for peftlab and HF PEFT runs of benchmarks/quality_peers.py, in peftlab's own environment
(transformers 5). The training loop, data and evaluation are quality_peers_train.py's, shared with the
AdapterHub worker (benchmarks/peers/adapterhub_quality_worker.py); this file only attaches methods.

    .venv/bin/python benchmarks/quality_peers_worker.py --jobs jobs.json --data data.pt --out out.jsonl
"""
from __future__ import annotations

import torch

from quality_peers_train import worker_main


def trainable(module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


def attach_peftlab(model, job: dict):
    """peftlab as a user attaches it: the method's config from its dict, attached and activated; the
    classifier trains with every method (train_head), the pooler stays frozen."""
    import peftlab as pl
    pl.attach(model, pl.config_from_dict(job["config"]), name="bench")
    pl.activate(model, "bench")
    return model, trainable(model)


def attach_peft(model, job: dict):
    """HF PEFT with task_type SEQ_CLS, which adds the classifier to modules_to_save (a trained copy of
    the same init); no class: the bare model, everything trained."""
    spec = job["config"]
    if spec["class"] is None:
        model.requires_grad_(True)
        return model, trainable(model)
    import peft
    config = getattr(peft, spec["class"])(task_type="SEQ_CLS", **spec["kwargs"])
    peft_model = peft.get_peft_model(model, config)
    return peft_model, trainable(peft_model)


def environment() -> dict:
    import transformers
    try:
        import peft
        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft_version}


if __name__ == "__main__":
    worker_main({"peftlab": attach_peftlab, "HF PEFT": attach_peft}, environment())
