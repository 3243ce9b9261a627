"""The one shared mechanism for input-embedding prompts (prompt tuning, SPoT, ATTEMPT).

A `PromptProvider` returns the m virtual-token embeddings for a batch; `install_prompt` hooks the model
(journaled forward pre-hooks with kwargs, no forked code) so that they are prepended to the input
embeddings and every mask, position and label tensor stays aligned:

- encoder-only (BERT, RoBERTa) and decoder-only (GPT-2, Llama) models: a pre-hook on the model itself
  embeds `input_ids`, prepends the prompt and extends `attention_mask`, `token_type_ids`, `position_ids`
  and, for causal LMs, `labels` (with -100). BERT then pools token 0, which is a virtual token, as HF PEFT
  does. In `generate()` only the first step (empty cache) gets the prompt; later steps only extend the
  mask and shift the positions, since the prompt already sits in the KV cache.
- encoder-decoder models (T5, BART): a pre-hook on the encoder prepends the prompt (so the encoder call
  `generate()` makes on its own is prompted too) and a pre-hook on the decoder extends the cross-attention
  mask whenever it is shorter than the encoder's output. The decoder input is left alone.

Per-batch side inputs (`task_ids` for multi-task ATTEMPT) are taken out of the model's kwargs (and
`generate()`'s) by the model's call hooks (calls.py), so the base model never sees them; the provider
receives them.

Rows routed to different adapters (`adapter_names=[...]`, a BatchSplit or ParallelBlock; see
`calls.row_mask`) get each their own adapter's prompt: the first prompt adapter attached builds the
prompted input of every row (each row group through its own providers, in the order the hooks would
run), the other prompt hooks stand aside. All rows must end up with prompts of one length.
"""
from __future__ import annotations

import torch
from torch import nn

from . import decoding
from .calls import current_task_ids, generation, row_mask
from .errors import PeftlabError

class PromptProvider(nn.Module):
    """Gives the prompt for a batch. `length` = m; `forward(embeds, mask, task_ids) -> (batch|1, m, d)`.

    `embeds` are the real tokens' input embeddings (batch, n, d); `mask` (batch, n) marks the tokens an
    input-dependent prompt may read: the real tokens (attention mask; ones where not given), and in a causal
    LM only the source, never a target (see `source_mask`); `task_ids` a (batch,) LongTensor when the
    batch carried one, else None."""

    length: int = 0

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, task_ids):
        raise NotImplementedError


def max_positions(hf_config) -> int | None:
    """The longest input the model's position embeddings allow (None: relative positions, no limit)."""
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(hf_config, attr, None)
        if isinstance(value, int):
            if getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta"):
                value -= (hf_config.pad_token_id or 0) + 1   # RoBERTa positions start after the pad id
            return value
    return None


def check_length(target, length: int) -> None:
    limit = max_positions(target.hf_config)
    if limit is not None and length >= limit:
        raise PeftlabError(f"prompt length {length} leaves no room for input: "
                           f"this model has {limit} positions")


def is_active(target) -> bool:
    return target.controller.is_active(target.name)


def install_prompt(target, provider: PromptProvider) -> None:
    """Hook the model so that `provider`'s prompt is prepended to every (encoder) input (journaled)."""
    check_length(target, provider.length)
    model, stacks = target.model, target.stacks()
    _register_provider(target, provider)
    target.note("input prompts", "encoder" if "encoder" in stacks and "decoder" in stacks else "model")
    if "encoder" in stacks and "decoder" in stacks:
        encoder, decoder = model.get_encoder(), _decoder_of(model)
        embed = encoder.embed_tokens
        target.add_hook(encoder.register_forward_pre_hook, _encoder_hook(target, provider, embed), with_kwargs=True)
        target.add_hook(decoder.register_forward_pre_hook, _cross_mask_hook(target, provider), with_kwargs=True)
    else:
        causal = "decoder" in stacks
        hook = _model_hook(target, provider, model.get_input_embeddings(), causal)
        target.add_hook(model.register_forward_pre_hook, hook, with_kwargs=True)


def _register_provider(target, provider) -> None:
    """The Controller keeps the model's prompt providers in hook order, for per-row routing and so that
    the model's call hooks take `task_ids` out of the batch for them (journaled)."""
    registry, name = target.controller.prompt_providers, target.name
    registry[name] = provider
    target.journal.record(lambda: registry.pop(name, None))


def _decoder_of(model) -> nn.Module:
    decoder = getattr(model, "get_decoder", lambda: None)()
    if decoder is None:
        raise PeftlabError(f"{type(model).__name__}: cannot find its decoder")
    return decoder


def _first_input(args, kwargs, key="input_ids"):
    """Move a positional input_ids into kwargs, so every hook works on kwargs only."""
    if args and kwargs.get(key) is None and torch.is_tensor(args[0]):
        kwargs[key] = args[0]
        args = args[1:]
    return args, kwargs


def _rows_of(args, kwargs) -> int | None:
    for key in ("input_ids", "inputs_embeds"):
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key].shape[0]
    return args[0].shape[0] if args and torch.is_tensor(args[0]) else None


def source_mask(kwargs: dict, mask: torch.Tensor | None, shape, hook: object) -> torch.Tensor:
    """The tokens of a causal LM's input that are its source, for prompts computed from the input
    (ATTEMPT's pool): real tokens, less the targets — those with a label when `labels` are given, and
    inside generate() every token after the input generate() was given. Without this the prompt, which
    every position attends to, would read the answer it is trained to predict. A row with no source
    token left (plain LM training, every token labelled) reads all its real tokens."""
    real = torch.ones(shape, dtype=torch.long) if mask is None else mask
    source = real.clone()
    labels = kwargs.get("labels")
    if torch.is_tensor(labels) and labels.shape == tuple(shape):
        source = source * (labels == -100).to(source.dtype)
    call = generation()
    if call is not None:
        source[:, call.input_lengths.setdefault(id(hook), shape[1]):] = 0
    empty = source.sum(dim=1) == 0
    return torch.where(empty[:, None], real, source)


def _prompted(provider, embeds, mask, task_ids=None, source=None):
    """(embeds with the prompt in front, mask extended) for real-token `embeds` and `mask` (or None);
    `source` marks the tokens the provider may read (default: the real tokens)."""
    batch, n = embeds.shape[:2]
    real_mask = torch.ones(batch, n, dtype=torch.long, device=embeds.device) if mask is None else mask
    task_ids = current_task_ids() if task_ids is None else task_ids
    readable = real_mask if source is None else source.to(real_mask.device)
    prompt = provider(embeds, readable, task_ids).to(embeds.dtype).expand(batch, -1, -1)
    ones = torch.ones(batch, provider.length, dtype=real_mask.dtype, device=real_mask.device)
    return torch.cat([prompt, embeds], dim=1), torch.cat([ones, real_mask], dim=1)


def _encoder_hook(target, provider, embed):
    def hook(module, args, kwargs):
        groups = routed_groups(target, _rows_of(args, kwargs))
        if (groups is None and not is_active(target)) or groups == []:
            return None
        args, kwargs = _first_input(args, kwargs)
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        embeds = embed(ids) if embeds is None else embeds
        kwargs["inputs_embeds"], kwargs["attention_mask"] = _prompt_rows(provider, groups, embeds,
                                                                         kwargs.get("attention_mask"))
        return args, kwargs

    return hook


def _cross_mask_hook(target, provider):
    """Prompts sit in front of the encoder's output: give the cross-attention mask that many leading ones
    (once, for all prompt adapters together, so stacked prompts stay aligned)."""
    def hook(module, args, kwargs):
        mask, states = kwargs.get("encoder_attention_mask"), kwargs.get("encoder_hidden_states")
        if mask is None or states is None or not (is_active(target) or _routed(target, states.shape[0])):
            return None
        missing = states.shape[1] - mask.shape[-1]
        if missing > 0:
            ones = torch.ones(*mask.shape[:-1], missing, dtype=mask.dtype, device=mask.device)
            kwargs["encoder_attention_mask"] = torch.cat([ones, mask], dim=-1)
        return args, kwargs

    return hook


def _model_hook(target, provider, embed, causal: bool):
    def hook(module, args, kwargs):
        groups = routed_groups(target, _rows_of(args, kwargs))
        if (groups is None and not is_active(target)) or groups == []:
            return None
        args, kwargs = _first_input(args, kwargs)
        length = provider.length if groups is None else sum(p.length for p in groups[0][0])
        if decoding.is_continuation(args, kwargs):
            _shift_for_cached_prompt(kwargs, length)
            return args, kwargs
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        embeds = embed(ids) if embeds is None else embeds
        mask = kwargs.get("attention_mask")
        source = source_mask(kwargs, mask, embeds.shape[:2], hook) if causal else None
        kwargs["inputs_embeds"], kwargs["attention_mask"] = _prompt_rows(provider, groups, embeds, mask, source)
        _extend_side_inputs(kwargs, length, causal)
        return args, kwargs

    return hook


def _shift_for_cached_prompt(kwargs, m: int) -> None:
    """A generation step after the first: the prompt is in the cache; keep mask and positions aligned."""
    mask = kwargs.get("attention_mask")
    if mask is not None:
        kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], m), mask], dim=1)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + m


def _extend_side_inputs(kwargs, m: int, causal: bool) -> None:
    positions = kwargs.get("position_ids")
    if positions is not None:
        front = torch.arange(m, device=positions.device).expand(positions.shape[0], m)
        kwargs["position_ids"] = torch.cat([front, positions + m], dim=1)
    types = kwargs.get("token_type_ids")
    if types is not None:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], m), types], dim=1)
    labels = kwargs.get("labels")
    if causal and labels is not None and labels.dim() == 2:
        kwargs["labels"] = torch.cat([labels.new_full((labels.shape[0], m), -100), labels], dim=1)


# --- per-row routing ------------------------------------------------------------------------------

def _routed(target, n_rows) -> bool:
    return n_rows is not None and row_mask(target.controller, target.name, n_rows) is not None


def routed_groups(target, n_rows):
    """How this call's rows get their prompts when rows are routed (`calls.row_mask`):
    None — not routed, the active set decides; [] — this hook adds nothing (another prompt hook builds
    every row, or no row has a prompt adapter); else [(providers, rows)] per group of rows that share
    their prompt adapters (in hook order), all giving prompts of one total length."""
    if n_rows is None:
        return None
    controller = target.controller
    registry = controller.prompt_providers
    if row_mask(controller, target.name, n_rows) is None:
        return None
    if next(iter(registry), None) != target.name:
        return []
    masks = {name: row_mask(controller, name, n_rows) for name in registry}
    by_names: dict[tuple, list] = {}
    for row in range(n_rows):
        by_names.setdefault(tuple(n for n in registry if masks[n][row]), []).append(row)
    if list(by_names) == [()]:
        return []
    _check_routed_prompts(by_names, registry)
    return [(tuple(registry[n] for n in names), torch.tensor(rows)) for names, rows in by_names.items()]


def _check_routed_prompts(by_names, registry) -> None:
    label = lambda names: "+".join(names)   # noqa: E731
    if () in by_names:
        prompted = sorted({n for names in by_names for n in names})
        raise PeftlabError(f"rows {by_names[()]} are routed to no prompt adapter while other rows use "
                           f"{', '.join(map(repr, prompted))}: a batch whose rows carry prompts needs one on "
                           f"every row (route those rows to a separate batch)")
    lengths = {label(names): sum(registry[n].length for n in names) for names in by_names}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"'{name}' {length}" for name, length in lengths.items())
        raise PeftlabError(f"prompt adapters routed in one batch have different lengths ({listed} tokens); "
                           f"rows of one batch need prompts of one length")


def _prompt_rows(provider, groups, embeds, mask, source=None):
    """Prepend the prompt: `provider`'s for every row (groups None), or each row group's own prompts,
    applied one after the other as their hooks would, then put back in row order."""
    if groups is None:
        return _prompted(provider, embeds, mask, source=source)
    n = embeds.shape[0]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device) if mask is None else mask
    task_ids = _task_ids_per_row(current_task_ids(), n)
    outs, masks = [], []
    for providers, rows in groups:
        e, m = embeds.index_select(0, rows.to(embeds.device)), mask.index_select(0, rows.to(mask.device))
        ids = None if task_ids is None else task_ids.index_select(0, rows.to(task_ids.device))
        readable = None if source is None else source.index_select(0, rows.to(source.device))
        for each in providers:
            e, m = _prompted(each, e, m, ids, readable)
            readable = None if readable is None else torch.cat([m.new_zeros(m.shape[0], each.length), readable], 1)
        outs.append(e)
        masks.append(m)
    inverse = torch.argsort(torch.cat([rows for _, rows in groups]))
    return torch.cat(outs).index_select(0, inverse.to(embeds.device)), \
        torch.cat(masks).index_select(0, inverse.to(mask.device))


def _task_ids_per_row(task_ids, n_rows):
    """`task_ids` as one id per row (generate() repeats each row for beams), or None."""
    if task_ids is None:
        return None
    ids = torch.as_tensor(task_ids).long().reshape(-1)
    if ids.numel() and ids.numel() != n_rows and n_rows % ids.numel() == 0:
        ids = ids.repeat_interleave(n_rows // ids.numel())
    if ids.numel() != n_rows:
        raise PeftlabError(f"task_ids {ids.tolist()} must give one index per row of a batch of {n_rows}")
    return ids
