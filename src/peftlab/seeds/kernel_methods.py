"""kernel-adapters' option tables and the methods its NLG configs build (ychen-stat-ml/kernel-adapters
d22e53f): the typed keys of train.py, evaluate.py and AdapterTrainingArguments, and the inducer, LoRA,
kernel-mix and adapter configs they translate into. Used by kernel.py (NLG JSON) and kernel_glue.py (NLU)."""
from __future__ import annotations

import re

from ..registry import get_method
from .base import Keys, Translation, refuse

GPT2_VOCAB, ADDED_TOKENS = 50257, 16   # GPT-2's vocabulary and the tokens train.py adds (train.py:61-65)
CODE_BASE = "kernel-adapters"
# GPT-2 models and vocabulary (the hub configs); the code adds 16 special tokens (train.py:61-65)
REDIRECTION = re.compile(r"^\d*(>>?|<)&?\d*$")
NONLINEARITIES = ("relu", "gelu", "gelu_new", "swish", "silu", "tanh")   # peftlab's; [tf] ACT2FN names

# key -> (type, default); train.py:268-296 (argparse, JSON values replace them: train.py:301-307)
TRAIN_PY = {
    "config": ("str", None), "seed": ("int", None), "task": ("str", "summarization"),
    "dataset_cache": ("str", "./dataset_cache"), "model_name": ("str", "gpt2"), "max_history": ("int", 2),
    "train_batch_size": ("int", 4), "valid_batch_size": ("int", 4), "gradient_accumulation_steps": ("int", 8),
    "lr": ("float", 6.25e-5), "label_smooth": ("float", 0.0), "max_norm": ("float", 1.0), "n_epochs": ("int", 1),
    "early_stop_metric": ("str", "average_ppl"), "patience": ("int", 5), "personality_permutations": ("int", 1),
    "eval_before_start": ("bool", False), "device": ("str", None), "local_rank": ("int", -1),
    "random_init": ("bool", False), "distillation": ("bool", False)}
# evaluate.py:122-185 TestingArguments
TESTING = {
    "seed": ("int", 123), "task": ("str", "webnlg"), "dataset_path": ("str", None),
    "dataset_cache": ("str", "./dataset_cache"), "model_checkpoint": ("str", "gpt2"), "max_history": ("int", 2),
    "max_length": ("int", 40), "min_length": ("int", 0), "temperature": ("float", 0.7), "top_k": ("float", 0),
    "top_p": ("float", 0.9), "no_sample": ("bool", True), "device": ("str", None)}
# training_args.py:7-111 AdapterTrainingArguments (task_reduction_factor: JSON values are not coerced)
ADAPTER = {
    "train_task_adapters": ("bool", False), "adapter_config_name": ("str", "adapter"),
    "add_layer_norm_before_adapter": ("bool", False), "add_layer_norm_after_adapter": ("bool", False),
    "hidden_dim": ("int", 128), "task_reduction_factor": ("float", 16), "task_reduction_factor_list": ("list", None),
    "non_linearity": ("str", "swish"), "unfreeze_lm_head": ("bool", False), "unfreeze_task_embeddings": ("bool", False),
    "unfreeze_layer_norms": ("bool", False), "task_adapter_layers_decoder": ("list", None),
    "add_adapter_in_feed_forward": ("bool", True), "add_adapter_in_self_attention": ("bool", True),
    "parallel_adapter": ("str", ""), "hypercomplex_adapters": ("bool", False), "hypercomplex_division": ("int", 8),
    "learn_phm": ("bool", True), "normalize_phm_weight": ("bool", False), "hypercomplex_nonlinearity": ("str", ""),
    "shared_phm_rule": ("bool", False), "factorized_phm": ("bool", False), "shared_W_phm": ("bool", False),
    "factorized_phm_rule": ("bool", False), "phm_c_init": ("str", "normal"), "phm_rank": ("int", 1),
    "phm_init_range": ("float", 0.01), "kronecker_prod": ("bool", False), "bitfit": ("bool", False),
    "freeze_bitfit_lm_head": ("bool", False), "freeze_bitfit_lm_head_all": ("bool", False),
    "kernel_adapter": ("bool", False), "shared_bandwidth": ("bool", True), "kernel_bitfit_variant": ("bool", False),
    "corresponding_kernel": ("bool", False), "kernel_Q_only": ("bool", False), "kerfit_variant_type": ("str", ""),
    "lora": ("str", ""), "lora_Q_rank": ("int", 4), "lora_V_rank": ("int", 4), "lora_alpha": ("float", 1.0),
    "lora_dropout": ("float", 0.0), "lora_tanh": ("bool", False), "lora_ini": ("str", "He_s"),
    "lora_head": ("bool", False), "lora_head_base": ("str", "XX"), "lora_Q_share_rank": ("int", 0),
    "lora_V_share_rank": ("int", 0), "unfreeze_all": ("bool", False),
    "truncated_gaussian_initialization": ("bool", False),
    "initialization_scale": ("str", "0.01"), "prefix_tuning": ("str", ""), "prefix_length": ("int", 8),
    "prefix_dim": ("int", 512), "prefix_value_extension": ("bool", False), "prefix_head_share": ("bool", False),
    "prefix_gating_ablation": ("bool", False), "init_prefix_from_vocab": ("bool", False)}
NLG_TYPES = {**TRAIN_PY, **TESTING, **ADAPTER}
# switches that must stay off: (why, where read)
OFF = {
    "hypercomplex_adapters": "PHM adapters of this code (adapter_modeling.py:413-440) are not translated",
    "bitfit": "its BitFit also trains lm_head, the tied embedding (utils.py:269-291); not translated",
    "lora_tanh": "tanh(BA) updates (low_rank_layer.py:83-86) have no peftlab counterpart",
    "prefix_head_share": "one value basis shared by the heads (low_rank_layer.py:254-255) has no peftlab counterpart",
    "eval_before_start": "adds a validation of the untrained model, a candidate for the kept checkpoint and for early "
                         "stopping (train.py:491-492, 522-538); peftlab has none",
}
PHM_KEYS = ("hypercomplex_division", "learn_phm", "normalize_phm_weight", "hypercomplex_nonlinearity",
            "shared_phm_rule", "factorized_phm", "shared_W_phm", "factorized_phm_rule", "phm_c_init", "phm_rank",
            "phm_init_range", "kronecker_prod", "freeze_bitfit_lm_head", "freeze_bitfit_lm_head_all")
TRAIN_ONLY = ("lr", "n_epochs", "train_batch_size", "valid_batch_size", "gradient_accumulation_steps", "label_smooth",
              "max_norm", "patience", "early_stop_metric", "unfreeze_lm_head", "unfreeze_layer_norms",
              "unfreeze_task_embeddings", "unfreeze_all", "eval_before_start")


def option_default(key: str, evaluate_only: bool):
    table = TESTING if evaluate_only and key in TESTING else NLG_TYPES if key in ADAPTER else TRAIN_PY
    return table.get(key, NLG_TYPES[key])[1]


def option_value(keys: Keys, key: str, evaluate_only: bool = False):
    return keys.get(key, option_default(key, evaluate_only))


def nlg_method(keys: Keys, out: Translation, evaluate_only: bool) -> None:
    src = out.source
    for key, why in OFF.items():
        if not (evaluate_only and key in TRAIN_ONLY) and keys.get(key, False):
            refuse(src, key, why)
    for key in PHM_KEYS:
        if key in keys:
            keys.get(key)
            out.ignore(key, "read only with hypercomplex_adapters or bitfit (adapter_modeling.py:413-440, "
                            "utils.py:282-291)")
    prefix, lora = keys.get("prefix_tuning", ""), keys.get("lora", "")
    adapters, kernel = keys.get("train_task_adapters", False), keys.get("kernel_adapter", False)
    parts = [name for name, on in (("prefix_tuning", prefix), ("lora", lora), ("train_task_adapters", adapters),
                                   ("kernel_adapter", kernel)) if on]
    if keys.get("unfreeze_all", False):
        if parts:
            refuse(src, "unfreeze_all", f"full fine-tuning plus {parts[0]}: no peftlab counterpart")
        method, origin = {"method": "full"}, "unfreeze_all (utils.py:215-216)"
    elif prefix:
        method, origin = _nlg_inducer(keys, out, prefix, lora, adapters, kernel)
    elif lora:
        method, origin = _nlg_kernel_mix(keys, out, lora, adapters, kernel)
    elif adapters:
        method = {"method": "bottleneck", **_bottleneck(keys, out)}
        origin = "train_task_adapters (custom_gpt2.py:142, 544)"
    elif kernel:
        method, origin = _nlg_kernel_adapter(keys, out)
    else:
        refuse(src, "method", "no adapter, prefix, LoRA or unfreeze_all: the code trains at most the task embeddings")
    _ignore_unused(keys, out, prefix, lora, adapters, kernel)
    _switches(keys, out, method, evaluate_only)
    out.set("method", with_compat(method, out), origin)


def _ignore_unused(keys, out, prefix, lora, adapters, kernel) -> None:
    groups = ((not prefix, ("prefix_length", "prefix_dim", "prefix_value_extension", "prefix_gating_ablation"),
               "read only with prefix_tuning (custom_gpt2.py:155-198)"),
              (not lora, ("lora_Q_rank", "lora_V_rank", "lora_alpha", "lora_dropout", "lora_ini", "lora_head",
                          "lora_head_base", "lora_Q_share_rank", "lora_V_share_rank"),
               "read only with lora (adapter_modeling.py:163-226)"),
              (not adapters, ("add_adapter_in_self_attention", "add_adapter_in_feed_forward", "task_reduction_factor",
                              "task_reduction_factor_list", "task_adapter_layers_decoder", "parallel_adapter",
                              "non_linearity", "truncated_gaussian_initialization", "initialization_scale",
                              "add_layer_norm_after_adapter", "add_layer_norm_before_adapter"),
               "no bottleneck adapter is built (train_task_adapters false, custom_gpt2.py:142, 544); the LayerNorm "
               "switches also give the LoRA/prefix controllers unused LayerNorms (adapter_controller.py:42-45)"),
              (not kernel, ("shared_bandwidth", "kernel_bitfit_variant", "corresponding_kernel", "kernel_Q_only"),
               "read only with kernel_adapter (adapter_modeling.py:10-70)"),
              (not (kernel or lora), ("kerfit_variant_type",), "read only by the kernel adapter and LoRA"))
    for off, names, reason in groups:
        for key in names if off else ():
            if key in keys:
                keys.get(key)
                out.ignore(key, reason)


def _switches(keys: Keys, out: Translation, method: dict, evaluate_only: bool) -> None:
    """unfreeze_* (utils.py:298-309) and the 16 task-embedding rows (train.py:438-444)."""
    if evaluate_only:
        return
    rows, whole = keys.get("unfreeze_task_embeddings", False), keys.get("unfreeze_lm_head", False)
    if method["method"] == "full":
        if rows:
            refuse(out.source, "unfreeze_task_embeddings", "with unfreeze_all zeroes the original vocabulary rows' "
                                                           "gradients (train.py:438-444): not full fine-tuning")
        for key in ("unfreeze_layer_norms", "unfreeze_lm_head", "unfreeze_task_embeddings"):
            if key in keys:
                keys.get(key)
                out.ignore(key, "unfreeze_all trains every parameter (utils.py:215-216)")
        return
    method["unfreeze_layer_norms"] = bool(keys.get("unfreeze_layer_norms", False))   # ln_1, ln_2, ln_f
    if whole and not rows and method["method"] != "full":
        method["unfreeze_lm_head"] = True       # the whole tied wte / lm_head (utils.py:307-309)
    if rows and not whole and method["method"] != "full":
        out.set("model.train_new_embeddings", True, "unfreeze_task_embeddings (utils.py:307-309, train.py:438-444)")
        out.notes.append(f"unfreeze_task_embeddings: the {ADDED_TOKENS} new rows train; the code clips the "
                         "gradient norm before zeroing the old rows' (train.py:434-444), peftlab after")


def with_compat(method: dict, out: Translation) -> dict:
    cls = get_method(method["method"]).config_cls
    if CODE_BASE in cls.compat_choices:
        method["compat"] = CODE_BASE
    else:
        out.notes.append(f"{method['method']} has no compat='{CODE_BASE}' switch (docs/fidelity.md K1-K5): its "
                         f"code-base behaviour is set by its fields")
    return method


def _nlg_inducer(keys, out, prefix, lora, adapters, kernel) -> tuple[dict, str]:
    """prefix_tuning "landmark" (custom_gpt2.py:283-344): the inducer; lora "Q" and a parallel FFN adapter beside."""
    src = out.source
    if prefix != "landmark":
        refuse(src, f"prefix_tuning {prefix}", "only 'landmark' (the inducer) is translated (custom_gpt2.py:198-203)")
    if kernel:
        refuse(src, "kernel_adapter", "beside the inducer: no peftlab combination")
    rank_k = keys.get("prefix_length", 8)
    if rank_k < 2:
        refuse(src, f"prefix_length {rank_k}", "below 2 the code scores <q, q> without a key MLP (custom_gpt2.py:"
                                               "290-299); peftlab's inducer has rank_k >= 1 MLP keys")
    method = {"method": "inducer", "rank_k": rank_k, "rank_v": keys.get("prefix_dim", 512),
              "prefix_value_extension": bool(keys.get("prefix_value_extension", False)),
              "joint_softmax": bool(keys.get("prefix_gating_ablation", False)),   # custom_gpt2.py:318-321
              "share_dropout": True, "lora": None, "parallel_adapter": None}      # custom_gpt2.py:328 (K1)
    if lora:
        method.update(method="inducer_lora", lora=_side_lora(keys, out, lora))
    if adapters:
        adapter = _bottleneck(keys, out)
        if not adapter["parallel"]:
            refuse(src, "parallel_adapter ''", "a serial adapter beside the inducer: peftlab's inducer takes a "
                                               "parallel one (inducer-mam)")
        method.update(method="inducer_mam", parallel_adapter={"method": "parallel", **adapter})
        if keys.get("add_layer_norm_before_adapter", False):
            out.notes.append("the code's count also holds 2 unused LayerNorms per layer (prefix and LoRA "
                             "controllers, adapter_controller.py:42-43): +36,864 printed, never in the forward")
    return method, "prefix_tuning landmark, prefix_length, prefix_dim, lora, train_task_adapters"


def _side_lora(keys, out, letters: str) -> dict:
    """lora "Q" without lora_head: LoRALinear on W_q, flat, with a zero bias (adapter_modeling.py:181-188,
    low_rank_layer.py:88-98, 143-149, 222-223; docs/fidelity.md K3)."""
    src = out.source
    if letters != "Q" or keys.get("lora_head", False):
        refuse(src, f"lora {letters}", "beside the inducer peftlab translates lora 'Q' without lora_head")
    if keys.get("kerfit_variant_type", ""):
        refuse(src, "kerfit_variant_type", "changes W_q's LoRA rank and bias (adapter_modeling.py:182-183)")
    if keys.get("lora_Q_share_rank", 0):
        refuse(src, "lora_Q_share_rank", "a second, shared W_q LoRA beside the inducer: not translated")
    init = keys.get("lora_ini", "He_s")
    if init != "He":
        refuse(src, f"lora_ini {init}", "peftlab's LoRA starts kaiming(a=sqrt 5) A, zero B and bias: lora_ini "
                                       "'He' (low_rank_layer.py:133-149; anything else raises NameError)")
    r, alpha = keys.get("lora_Q_rank", 4), keys.get("lora_alpha", 1.0)
    scale_alpha = alpha if alpha > 1.5 else float(r)      # scaling alpha/r only when alpha > 1.5 (:93-94)
    return {"method": "lora", "r": r, "alpha": float(scale_alpha), "dropout": keys.get("lora_dropout", 0.0),
            "slots": ["attn.q"], "bias": True}


def kernel_mix_config(values: dict, source: str, letters: str, flag: str = "") -> dict:
    """kernel-mix from LoRA's head-specific terms (NLG adapter_modeling.py:163-226, NLU petl_factory.py:618-681):
    bases X, K, A for Q, V, O; O reuses V's ranks (:219, 223-224); head terms scale 1, shared ones alpha/r only
    when alpha > 1.5 (low_rank_layer.py:88-94); init 'Houlsby' = fmod-normal 0.01 everywhere (:133-139)."""
    def name(key):
        return f"{flag}{key}"
    if set(letters) - set("QVO"):
        refuse(source, f"lora {letters}", "kernel-mix updates Q, V and O only (K and C are not translated)")
    if not values["lora_head"]:
        refuse(source, name("lora_head"), "absent (false): the O update feeds per-head outputs to a non-head "
               "LoRALinear, which fails (NLU modeling_roberta.py:508-515, petl_factory.py:838-843); kernel-mix "
               "needs lora_head true")
    base = values["lora_head_base"]
    bases = {"Q": (base[:1], "X"), "V": (base[1:2], "K"), "O": (base[-1:], "A")}
    for letter in letters:
        if bases[letter][0] != bases[letter][1]:
            refuse(source, name("lora_head_base") + f" {base}", f"{letter} from base {bases[letter][0]!r}; peftlab's "
                   f"kernel-mix takes Q from X, V from K, O from A (XKA)")
    if values["kerfit_variant_type"]:
        refuse(source, name("kerfit_variant_type"), "changes W_q's rank and bias (adapter_modeling.py:182-183)")
    if values["lora_alpha"] > 1.5 and (values["lora_Q_share_rank"] or values["lora_V_share_rank"]):
        refuse(source, name("lora_alpha"), "> 1.5 scales only the shared terms by alpha/r (low_rank_layer.py:93-94); "
                                           "peftlab's alpha scales every term")
    if values["lora_init"] != "Houlsby":
        refuse(source, name("lora_init") + f" {values['lora_init']}", "peftlab's kernel-mix starts as 'Houlsby' "
               "(A, B, b small normals, init 'normal') or zero B and b with normal A; not kaiming A")
    return {"method": "kernel_mix", "r_q": values["lora_Q_rank"], "r_v": values["lora_V_rank"],
            "r_o": values["lora_V_rank"], "shared_r_q": values["lora_Q_share_rank"],
            "shared_r_v": values["lora_V_share_rank"], "shared_r_o": values["lora_V_share_rank"], "alpha": None,
            "dropout": values["lora_dropout"], "targets": [t.lower() for t in "QVO" if t in letters], "init": "normal"}


def _nlg_kernel_mix(keys, out, letters, adapters, kernel) -> tuple[dict, str]:
    if adapters or kernel:
        refuse(out.source, "lora", "with train_task_adapters or kernel_adapter: no peftlab combination")
    names = ("lora_head", "lora_head_base", "kerfit_variant_type", "lora_alpha", "lora_Q_share_rank",
             "lora_V_share_rank", "lora_Q_rank", "lora_V_rank", "lora_dropout")
    values = {k: option_value(keys, k) for k in names}
    if keys.get("lora_ini", "He_s") != "Houlsby":
        refuse(out.source, f"lora_ini {keys.get('lora_ini', 'He_s')}", "peftlab's kernel-mix starts as 'Houlsby' "
               "(low_rank_layer.py:133-139: A, B, b small normals), not kaiming A and zero B")
    values["lora_init"] = "Houlsby"
    if not values["lora_head"]:
        refuse(out.source, f"lora {letters}", "plain LoRA on GPT-2's fused c_attn: peftlab's LoRA adapts the whole "
               "q/k/v output there; translated: 'Q' beside the inducer, 'QVO' kernel-mix")
    return kernel_mix_config(values, out.source, letters), "lora QVO with lora_head (custom_gpt2.py:172-180)"


def _nlg_kernel_adapter(keys, out) -> tuple[dict, str]:
    """KernelAdapter (adapter_modeling.py:10-107): bandwidths on q (and k), shared by heads by default."""
    variant = keys.get("kerfit_variant_type", "")
    bitfit = variant == "bitfit" or (variant == "" and keys.get("kernel_bitfit_variant", False))
    if bitfit or variant not in ("", "kernel", "kerfit"):
        refuse(out.source, "kerfit_variant_type", f"{variant or 'kernel_bitfit_variant'}: not translated (additive or "
                                                  f"separately scaled bandwidths, adapter_modeling.py:28-69)")
    keys.get("kernel_bitfit_variant")
    if keys.get("truncated_gaussian_initialization", False) or keys.get("corresponding_kernel", False):
        refuse(out.source, "truncated_gaussian_initialization/corresponding_kernel",
               "not translated for the kernel adapter")
    return {"method": "kernel_adapter", "per_head": not keys.get("shared_bandwidth", True),
            "query_bias": variant == "kerfit", "scale_keys": not keys.get("kernel_Q_only", False)}, "kernel_adapter"


def _bottleneck(keys, out) -> dict:
    """Adapter (adapter_modeling.py:132-161) under AdapterController (adapter_controller.py:142-158)."""
    src = out.source
    if keys.get("task_reduction_factor_list") is not None:
        refuse(src, "task_reduction_factor_list", "one reduction factor per layer (custom_gpt2.py:901-913)")
    parallel = keys.get("parallel_adapter", "") != ""
    after = bool(keys.get("add_layer_norm_after_adapter", False))
    if after and not parallel:
        refuse(src, "add_layer_norm_after_adapter", "normalizes adapter(x) + x (adapter_controller.py:151-156); "
                                                    "peftlab's adapter_layernorm_after normalizes the branch")
    act = keys.get("non_linearity", "swish").lower()
    if act not in NONLINEARITIES:
        refuse(src, f"non_linearity {act}", f"peftlab's adapters take {', '.join(NONLINEARITIES)}")
    for key, reason in (("truncated_gaussian_initialization", "overwritten: the loader re-initializes the adapter's "
                         "Linear layers N(0, 0.02²) (custom_modeling_utils.py:1269-1288; docs/fidelity.md K4)"),
                        ("initialization_scale", "read only with truncated_gaussian_initialization "
                                                 "(adapter_modeling.py:145-153)")):
        if key in keys:
            keys.get(key)
            out.ignore(key, reason)
    return {"reduction_factor": float(keys.get("task_reduction_factor", 16)), "non_linearity": act,
            "mh_adapter": bool(keys.get("add_adapter_in_self_attention", True)),
            "output_adapter": bool(keys.get("add_adapter_in_feed_forward", True)), "parallel": parallel,
            "residual_before_ln": True,
            "adapter_layernorm_before": bool(keys.get("add_layer_norm_before_adapter", False)),
            "adapter_layernorm_after": after, "scaling": 1.0, "init": "bert",
            "layers": keys.get("task_adapter_layers_decoder")}
