"""The AdapterHub worker of benchmarks/quality_peers.py: runs inside benchmarks/.venv-adapters (`adapters`
1.3, transformers 4.57), where peftlab cannot be imported. The training loop, data and evaluation are
benchmarks/quality_peers_train.py's (torch and transformers only), shared with the peftlab / HF PEFT
worker; this file only attaches AdapterHub's methods.

    benchmarks/.venv-adapters/bin/python benchmarks/peers/adapterhub_quality_worker.py \
        --jobs jobs.json --data data.pt --out out.jsonl
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from quality_peers_train import worker_main  # noqa: E402  (benchmarks/: torch and transformers only)


def attach_adapterhub(model, job: dict):
    """`adapters.init`, `add_adapter`, `train_adapter` as AdapterHub's docs show; `train_adapter`
    freezes everything else, so the classifier (a plain transformers head, not a flex head) is
    unfrozen by hand: every library trains the same head. No class: the bare model, all trained."""
    spec = job["config"]
    if spec["class"] is None:
        model.requires_grad_(True)
        return model, [p for p in model.parameters() if p.requires_grad]
    import adapters
    adapters.init(model)
    if spec["kwargs"].get("prompt_init") == "from_string":
        # AdapterHub reads the tokenizer for the init text from the model config
        model.config.tokenizer_name_or_path = job["tokenizer_path"]
    model.add_adapter("bench", config=getattr(adapters, spec["class"])(**spec["kwargs"]))
    model.train_adapter("bench")
    model.classifier.requires_grad_(True)
    return model, [p for p in model.parameters() if p.requires_grad]


def environment() -> dict:
    import adapters
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "adapters": adapters.__version__}


if __name__ == "__main__":
    worker_main({"AdapterHub": attach_adapterhub}, environment())
