"""AdapterHub's prompt tuning (adapters 1.3, methods/prompt_tuning.py): m trainable vectors joined to the
*output* of the embeddings module, after its position and token-type embeddings, LayerNorm and dropout
(a forward hook on it, prompt_tuning.py:180-216), and m unmasked positions put in front of the attention
mask (utils.py:873-913). peftlab's `PromptTuning` prepends to the word embeddings instead, so the prompt
gets position embeddings and the LayerNorm, as HF PEFT's does (docs/fidelity.md H7).

Which positions the prompt's own queries may attend to depends on AdapterHub's attention path: under
SDPA (transformers 4.57's default for BERT) it prefixes the 4-D mask along the query axis too
(models/bert/modeling_bert.py:166), so the m prompt rows attend to padded tokens as well; under eager
attention (:49) they do not. `prompt_sees_padding` picks one (docs/fidelity.md H8).

AdapterHub offers it on BERT-like encoders only (its T5, BART, GPT-2 and Llama models set
`support_prompt_tuning = False`); so does this method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import AutoTokenizer

from ..config import MethodConfig, check
from ..errors import PeftlabError
from ..models import offline_path
from ..prompting import is_active
from ..registry import register_method
from ..runtime import base_module, named_base_modules

UNIFORM_SCALE = 0.5      # PromptTuningConfig.random_uniform_scale (a class attribute, not a config key)


@dataclass
class AdapterHubPromptTuning(MethodConfig):
    """AdapterHub's `PromptTuningConfig`; `tokenizer` (a path or hub id) tokenizes `prompt_init_text`, where
    AdapterHub reads the model config's `tokenizer_name_or_path`; `seed` draws the random init."""

    prompt_length: int = 10
    prompt_init: Literal["random_uniform", "from_string"] = "random_uniform"
    prompt_init_text: str | None = None
    combine: Literal["prefix", "prefix_after_bos"] = "prefix"
    tokenizer: str | None = None
    seed: int = 0
    prompt_sees_padding: bool = True   # AdapterHub under SDPA attention; False: under eager attention
    compat: str | None = "adapterhub"
    compat_choices = ("adapterhub",)

    def validate(self):
        name = type(self).__name__
        check(self.compat == "adapterhub", f"{name} is AdapterHub's method: compat must be 'adapterhub', "
                                           f"got {self.compat!r} (pl.PromptTuning is peftlab's)")
        check(self.prompt_length >= 1, f"{name}.prompt_length must be >= 1, got {self.prompt_length}")
        check(self.prompt_init != "from_string" or (bool(self.prompt_init_text) and bool(self.tokenizer)),
              f"{name}.prompt_init='from_string' needs prompt_init_text and a tokenizer path")


class AdapterHubPrompt(nn.Module):
    def __init__(self, initial: torch.Tensor):
        super().__init__()
        self.embedding = nn.Parameter(initial.detach().clone().float())


def _embeddings_path(target) -> str:
    """The embeddings module (whose output AdapterHub extends): the parent of the word embeddings."""
    check(target.layout.name == "bert", f"AdapterHub's prompt tuning exists for BERT-like encoders only "
                                        f"(adapters 1.3 has none for {target.layout.name}); use pl.PromptTuning")
    word = [p for p, _ in named_base_modules(target.model) if p.endswith(target.layout.embeddings[0])]
    check(bool(word), "AdapterHub prompt tuning: no word embeddings found")
    return word[0].rsplit(".", 1)[0]


def _initial(target, prompt_length, prompt_init, prompt_init_text, tokenizer, seed) -> torch.Tensor:
    width = target.hidden_size
    if prompt_init == "random_uniform":
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(prompt_length, width, generator=g) * 2 - 1) * UNIFORM_SCALE
    source = offline_path(tokenizer) or tokenizer
    try:   # AdapterHub tokenizes with the special tokens, then repeats and cuts (prompt_tuning.py:88-110)
        ids = AutoTokenizer.from_pretrained(str(source))(prompt_init_text)["input_ids"]
    except OSError as err:
        raise PeftlabError(f"cannot load tokenizer '{tokenizer}' for prompt_init_text ({err})") from None
    ids = (ids * (prompt_length // len(ids) + 1))[:prompt_length]
    table = target.model.get_input_embeddings().weight
    check(max(ids) < table.shape[0], f"prompt_init_text token id {max(ids)} is outside the vocabulary")
    return table.detach()[torch.tensor(ids, device=table.device)].float().clone()


def _join(target, prompt: AdapterHubPrompt, combine: str):
    def hook(module, args, output):
        if not is_active(target):
            return output
        p = prompt.embedding.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        if combine == "prefix":
            return torch.cat([p, output], dim=1)
        return torch.cat([output[:, :1], p, output[:, 1:]], dim=1)
    return hook


def _sdpa_mask(keys: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """AdapterHub's mask under SDPA: (batch, 1, n, n) additive, the first `length` query rows unmasked."""
    total = keys.shape[1]
    mask = (1.0 - keys[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    mask = mask.expand(keys.shape[0], 1, total, total).clone()
    mask[:, :, :length, :] = 0
    return mask


def _extend_mask(target, length: int, sees_padding: bool):
    """m ones in front of a 2-D attention mask, whatever `combine` says (AdapterHub prefixes the mask)."""
    def hook(module, args, kwargs):
        if not is_active(target):
            return None
        positional = "attention_mask" not in kwargs and len(args) > 1
        mask = args[1] if positional else kwargs.get("attention_mask")
        if mask is None:
            return None
        if mask.dim() != 2:
            raise PeftlabError("AdapterHub prompt tuning: pass a 2-D attention mask (batch, tokens)")
        mask = torch.cat([mask.new_ones(mask.shape[0], length), mask], dim=1)
        if sees_padding:
            mask = _sdpa_mask(mask, length, next(module.parameters()).dtype)
        if positional:
            return (args[0], mask, *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": mask}
    return hook


def build_adapterhub_prompt(target, *, prompt_length, prompt_init, prompt_init_text, combine, tokenizer, seed,
                            prompt_sees_padding, compat):
    path = _embeddings_path(target)
    owner = path.rsplit(".", 1)[0] if "." in path else ""
    embeddings = target.module(path)
    encoder_model = base_module(target.model.get_submodule(owner)) if owner else target.model
    prompt = AdapterHubPrompt(_initial(target, prompt_length, prompt_init, prompt_init_text, tokenizer, seed))
    home = target.home()
    home.prompt = prompt.to(target.model.get_input_embeddings().weight.device)
    target.add_hook(embeddings.register_forward_hook, _join(target, prompt, combine))
    target.add_hook(encoder_model.register_forward_pre_hook,
                    _extend_mask(target, prompt_length, prompt_sees_padding), with_kwargs=True)
    target.note("input prompts", path)


def _example(model, tmp_dir):
    model_type = getattr(model.config, "model_type", "")
    return AdapterHubPromptTuning(prompt_length=3) if model_type in ("bert", "roberta") else None


register_method("adapterhub_prompt_tuning", AdapterHubPromptTuning, build_adapterhub_prompt,
                aliases=("ah_prompt_tuning",), example=_example)
