"""The methods of benchmarks/quality_peers.py, each as every library that has it spells it, with one
learning rate for all libraries and the notes the results print beside the mapping.

A library's config is plain JSON the worker turns into the library's object: peftlab a
`pl.config_from_dict` dict, HF PEFT and AdapterHub {"class": config class name, "kwargs": {...}};
`None` as class means the bare model (full fine-tuning). Shared knobs (reduction factor, rank, lengths,
non-linearity, init) are set to the same values on both sides wherever both libraries expose them; what
cannot be matched by a setting is said in `notes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

LIBRARIES = ("peftlab", "HF PEFT", "AdapterHub")
FULL = "Full fine-tuning"
PROMPT = "Prompt tuning"
REDUCTION = 32              # k = 12 on MiniLM (d = 384), Compacter's setting
PROMPT_LENGTH = 20
ADAPTER_LR = 3e-3           # Compacter's rate for every adapter method
# (IA)3 in HF PEFT scales key, value and the FFN's output.dense input; PEFT's default suffix list for BERT
# ("key", "value", "output.dense") also catches attention.output.dense, a fourth vector per layer that
# peftlab and AdapterHub do not have: the regex below keeps PEFT to the paper's three.
IA3_TARGETS = r".*\.(key|value|(?<!attention\.)output\.dense)$"
IA3_FF = r".*\.(?<!attention\.)output\.dense$"


@dataclass
class Method:
    label: str
    lr: float
    configs: dict              # library -> config (see the module doc)
    notes: list[str] = field(default_factory=list)
    bf16: bool = True          # bf16 autocast allowed on CUDA


def _bn(cls: str, **kwargs) -> dict:
    return {"class": cls, "kwargs": {"reduction_factor": REDUCTION, **kwargs}}


def methods(prompt_text: str, prompt_ids: list[int], tokenizer_path: str) -> dict[str, Method]:
    """label -> Method; the prompt-tuning configs carry the task's init text (and its ids for peftlab)."""
    table = _shared(prompt_text, prompt_ids, tokenizer_path) + _bottlenecks() + _checks()
    return {m.label: m for m in table}


LORA_ALL = "LoRA (r=4, α=8, all linear)"
PFEIFFER_WIDE, PARALLEL_WIDE = "Pfeiffer (k=24)", "Parallel (k=24, s=4)"


def _checks() -> list[Method]:
    """Methods run only when named (--methods), to check a cause: not in the default plan."""
    return [Method(LORA_ALL, 3e-3, {"peftlab": {"method": "lora", "r": 4, "alpha": 8, "slots": [
        "attn.q", "attn.k", "attn.v", "attn.o", "ffn.in", "ffn.out"]}},
        ["peftlab only, a check of LoRA's gap: every linear layer of each block at rank 4 (0.73 % with "
         "the classifier), where the table's LoRA adapts the query and value projections at rank 8."]),
        Method(PFEIFFER_WIDE, ADAPTER_LR, {"peftlab": {"method": "pfeiffer", "reduction_factor": REDUCTION // 2,
                                                       "init": "bert"}},
               ["peftlab only, a check of the one-adapter-per-block gap: Pfeiffer with twice the bottleneck."]),
        Method(PARALLEL_WIDE, ADAPTER_LR, {"peftlab": {"method": "parallel", "reduction_factor": REDUCTION // 2},
                                           "AdapterHub": _bn("ParBnConfig", reduction_factor=REDUCTION // 2)},
               ["A check of the one-adapter-per-block gap: Parallel with twice the bottleneck (AdapterHub's too, "
                "to tell a method's instability from peftlab's)."]),
        Method("SeqBn (k=12)", ADAPTER_LR,
               {"peftlab": {"method": "seq_bn", "reduction_factor": REDUCTION},
                "AdapterHub": _bn("SeqBnConfig")},
               ["AdapterHub's Pfeiffer as AdapterHub computes it: peftlab's `pl.SeqBn` (compat='adapterhub', "
                "docs/adapterhub.md) against the same SeqBnConfig as the Pfeiffer row; it tells whether the "
                "Pfeiffer row's gap is the placement."])]


def _shared(prompt_text: str, prompt_ids: list[int], tokenizer_path: str) -> list[Method]:
    """Full fine-tuning and the methods all three libraries have."""
    return [
        Method(FULL, 1e-4, {"peftlab": {"method": "full"}, "HF PEFT": {"class": None},
                            "AdapterHub": {"class": None}},
               ["Every parameter trains (the pooler included). HF PEFT has no full fine-tuning: its row is "
                "the bare model under transformers 5 (PEFT's environment); AdapterHub's is the bare model "
                "under transformers 4.57 (its environment), with no `adapters.init`."]),
        Method("LoRA (r=8, α=16, q, v)", 3e-3,
               {"peftlab": {"method": "lora", "r": 8, "alpha": 16},
                "HF PEFT": {"class": "LoraConfig", "kwargs": {"r": 8, "lora_alpha": 16,
                                                              "target_modules": ["query", "value"]}},
                "AdapterHub": {"class": "LoRAConfig", "kwargs": {"r": 8, "alpha": 16}}},
               ["All three: B = 0, A Kaiming-uniform, scale α/r = 2, on the query and value projections."]),
        Method("(IA)³", 1e-2,
               {"peftlab": {"method": "ia3"},
                "HF PEFT": {"class": "IA3Config", "kwargs": {"target_modules": IA3_TARGETS,
                                                             "feedforward_modules": IA3_FF}},
                "AdapterHub": {"class": "IA3Config", "kwargs": {}}},
               ["peftlab and HF PEFT scale keys, values and the FFN activation (the input of output.dense), "
                "as the paper's l_ff. AdapterHub's IA3Config (a LoRA variant, intermediate_lora) scales the "
                "output of intermediate.dense, i.e. *before* the GELU: a different placement, same count.",
                "HF PEFT's default targets for BERT would add attention.output.dense (4 vectors per layer, "
                "+2,304 parameters); a regex keeps it to the paper's three."]),
        Method(PROMPT, 3e-1, _prompt_configs(prompt_text, prompt_ids, tokenizer_path),
               [f"{PROMPT_LENGTH} virtual tokens, initialized from the embeddings of the same init text's ids "
                "(repeated to 20; Lester et al.'s text init) in all three.",
                "peftlab and HF PEFT prepend the prompt to the *word* embeddings (it then gets position "
                "embeddings and the embedding LayerNorm); AdapterHub concatenates it to the embedding "
                "*output* (after the LayerNorm), so its text init starts at word-embedding scale among "
                "LayerNorm-scaled vectors. All three put it before [CLS], so BERT's pooler reads the "
                "first virtual token."]),
        Method("Prefix tuning (m=10, MLP 64)", 5e-3,
               {"peftlab": {"method": "prefix_tuning", "prefix_length": 10, "mlp_hidden": 64},
                "HF PEFT": {"class": "PrefixTuningConfig", "kwargs": {
                    "num_virtual_tokens": 10, "prefix_projection": True, "encoder_hidden_size": 64}},
                "AdapterHub": {"class": "PrefixTuningConfig", "kwargs": {"prefix_length": 10,
                                                                          "bottleneck_size": 64}}},
               ["All three reparameterize through embedding -> Linear(384, 64) -> tanh -> Linear(64, "
                "6 x 2 x 384), trained as a whole (counted while training)."]),
    ]


def _bottlenecks() -> list[Method]:
    """The bottleneck adapters peftlab and AdapterHub have (HF PEFT has none)."""
    return [
        Method("Houlsby (k=12)", ADAPTER_LR,
               {"peftlab": {"method": "houlsby", "reduction_factor": REDUCTION, "init": "bert"},
                "AdapterHub": _bn("DoubleSeqBnConfig")},
               ["After attention and after the FFN, swish, both reading the sublayer output before the "
                "residual add; init N(0, 0.02²) weights, zero biases (AdapterHub's `bert` init, set in "
                "peftlab with init='bert')."]),
        Method("Pfeiffer (k=12)", ADAPTER_LR,
               {"peftlab": {"method": "pfeiffer", "reduction_factor": REDUCTION, "init": "bert"},
                "AdapterHub": _bn("SeqBnConfig")},
               ["After the FFN, ReLU, `bert` init in both. Placement differs: AdapterHub's SeqBn "
                "(original_ln_before=True) feeds the adapter LN(h + x), the FFN output after the layer's "
                "own LayerNorm and residual, and adds it back to h; peftlab's Pfeiffer feeds it h, as its "
                "Houlsby does (peftlab's compat='adapterhub' SeqBn reproduces AdapterHub's; not run here)."]),
        Method("Compacter (n=4, k=12)", ADAPTER_LR,
               {"peftlab": {"method": "compacter", "reduction_factor": REDUCTION, "non_linearity": "gelu"},
                "AdapterHub": _bn("CompacterConfig")},
               ["Houlsby placement, PHM layers with n = 4, shared rule, rank-1 factorized W, GELU "
                "(AdapterHub's default; peftlab's is swish, set to gelu here). Init: each library's PHM "
                "init (peftlab: the Compacter paper's code; AdapterHub: its port of it)."]),
        Method("Compacter++ (n=4, k=12)", ADAPTER_LR,
               {"peftlab": {"method": "compacter++", "reduction_factor": REDUCTION, "non_linearity": "gelu"},
                "AdapterHub": _bn("CompacterPlusPlusConfig")},
               ["After the FFN only, otherwise as Compacter. AdapterHub's Compacter++ is SeqBn-based "
                "(original_ln_before=True): the same placement difference as Pfeiffer."]),
        Method("Parallel (k=12, s=4)", ADAPTER_LR,
               {"peftlab": {"method": "parallel", "reduction_factor": REDUCTION},
                "AdapterHub": _bn("ParBnConfig")},
               ["Beside the FFN, reading its input, scaled by 4, ReLU; down Kaiming-uniform, up zero "
                "(peftlab zero_up, AdapterHub mam_adapter). AdapterHub's ParBn default reduction factor "
                "is 2; set to 32 here."]),
    ]


def _prompt_configs(text: str, ids: list[int], tokenizer_path: str) -> dict:
    return {
        "peftlab": {"method": "prompt_tuning", "length": PROMPT_LENGTH, "init": "text",
                    "init_token_ids": list(ids)},
        "HF PEFT": {"class": "PromptTuningConfig", "kwargs": {
            "num_virtual_tokens": PROMPT_LENGTH, "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": text,
            "tokenizer_name_or_path": tokenizer_path}},
        "AdapterHub": {"class": "PromptTuningConfig", "kwargs": {
            "prompt_length": PROMPT_LENGTH, "prompt_init": "from_string", "prompt_init_text": text}},
    }


def method_labels() -> list[str]:
    """The default plan's methods (the cause checks only run when named)."""
    checks = {m.label for m in _checks()}
    return [label for label in methods("x", [0], "") if label not in checks]
