"""HF PEFT as a peer, in peftlab's own environment: its LoRA, IA3, prompt and prefix tuning on the same
model and batch, with settings matched to benchmarks/speed.py's (LoRA r = 8, alpha 16 on PEFT's default
targets; 100 prompt tokens on the encoder only; 30 prefix tokens)."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

PROMPT_LENGTH = 100
PREFIX_LENGTH = 30


def task_type(model: nn.Module) -> str:
    if model.config.is_encoder_decoder:
        return "SEQ_2_SEQ_LM"
    return "CAUSAL_LM" if "LM" in type(model).__name__ else "SEQ_CLS"


def configs(model: nn.Module) -> dict:
    """name -> PEFT config factory; empty when PEFT is not installed."""
    try:
        import peft
    except ImportError:
        return {}
    task = task_type(model)
    return {
        "peft:lora": lambda: peft.LoraConfig(r=8, lora_alpha=16, task_type=task),
        "peft:ia3": lambda: peft.IA3Config(task_type=task),
        # num_transformer_submodules=1: encoder-only prompts, as in the papers (PEFT's T5 default is 2)
        "peft:prompt_tuning": lambda: peft.PromptTuningConfig(num_virtual_tokens=PROMPT_LENGTH, task_type=task,
                                                              num_transformer_submodules=1),
        "peft:prefix_tuning": lambda: peft.PrefixTuningConfig(num_virtual_tokens=PREFIX_LENGTH, task_type=task),
    }


@contextmanager
def attached(model: nn.Module, config):
    """Yields the PeftModel; afterwards the base model is bare and fully trainable again."""
    import peft
    peft_model = peft.get_peft_model(model, config)
    try:
        yield peft_model
    finally:
        if config.peft_type.value in ("LORA", "IA3"):
            peft_model.unload()      # removes the injected layers without merging them
        for p in model.parameters():
            p.requires_grad_(True)


def train_variants(model: nn.Module, names=None) -> dict:
    """Variants for common.interleaved_medians: name -> ctx(model) yielding the module to call."""
    factories = configs(model)
    wanted = [n for n in factories if names is None or n in names]
    return {name: (lambda m, make=factories[name]: attached(m, make())) for name in wanted}


def lora_for_inference(model: nn.Module) -> nn.Module:
    """PEFT LoRA on `model` (a copy the caller owns) with non-zero B, in eval mode. Its `merge_adapter()` /
    `unmerge_adapter()` fold the weights in and out while keeping PEFT's layers in place, which is
    the state compared with peftlab's merged adapter (whose slots also stay in place)."""
    import peft
    import torch
    peft_model = peft.get_peft_model(model, configs(model)["peft:lora"]())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return peft_model.eval()
