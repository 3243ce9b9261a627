"""AdapterHub parity fixtures (tests/fixtures/adapterhub/) and the export check, in three steps:

    benchmarks/.venv-adapters/bin/python scripts/adapterhub_fixtures.py write        # AdapterHub's side
    .venv/bin/python scripts/adapterhub_fixtures.py export DIR                        # peftlab's exports
    benchmarks/.venv-adapters/bin/python scripts/adapterhub_fixtures.py check DIR    # AdapterHub loads them

`write` builds tiny random BERT, RoBERTa, GPT-2, T5, BART and Llama models with transformers 4.57, saves
their weights (safetensors), a fixed batch and a fixed probe tensor, adds each AdapterHub method with random
non-zero weights (seeded), and saves the adapter with AdapterHub's own `save_adapter` beside AdapterHub's
logits (`expected.safetensors`) and the gradients of one loss, sum(logits * probe) in train mode with every
dropout at 0, with respect to each adapter tensor under AdapterHub's name (`grads.safetensors`).
`tests/test_adapterhub.py` rebuilds each base in transformers 5 from those weights, loads the adapter
with `pl.load` and compares logits and gradients; it needs no AdapterHub install. `export` (peftlab's venv) loads
every fixture and writes it back with `pl.export_adapterhub`, with peftlab's logits; `check` loads those
directories with AdapterHub's `load_adapter` and compares. `make test-peers` runs all three.

AdapterHub (adapters 1.3) pins transformers 4.57 and peftlab needs 5.x, so this file imports neither
library at the top: each step imports what its environment has.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import transformers as tf
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "adapterhub"
ARCHS = ("bert", "roberta", "gpt2", "t5", "bart", "llama")
sys.path.insert(0, str(ROOT / "tests"))
# tests/tiny.py: the same tiny configs on transformers 4.57 (here) and 5 (the tests), and no_dropout
from tiny import VOCAB, no_dropout, tiny_config  # noqa: E402
ENCODERS, SEQ2SEQ = ("bert", "roberta"), ("t5", "bart")


def model_class(arch: str):
    if arch in SEQ2SEQ:
        return tf.AutoModelForSeq2SeqLM
    return tf.AutoModelForSequenceClassification if arch in ENCODERS else tf.AutoModelForCausalLM


def fixed_batch(arch: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0          # one padded row
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch in SEQ2SEQ:
        batch["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 4), generator=g)
    return batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.detach().clone()


def probe(arch: str, shape) -> torch.Tensor:
    """The fixed tensor the gradient check's loss weighs the logits with: sum(logits * probe)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(5))


def gradients(model, batch, weights: torch.Tensor, params: dict) -> dict:
    """d sum(logits * weights) / d each of `params` (name -> tensor), in train mode with dropout 0."""
    state = torch.random.get_rng_state()        # the fixtures after this one must not see a changed RNG
    model.train()
    for tensor in params.values():
        tensor.requires_grad_(True)
    out = model(**batch).logits
    model.eval()
    grads = torch.autograd.grad((out * weights).sum(), list(params.values()), allow_unused=True)
    torch.random.set_rng_state(state)
    if (out.detach() - logits(model, batch)).abs().max() > 1e-6:
        raise RuntimeError("train mode still differs from eval mode: a dropout is left on")
    return {k: (g if g is not None else torch.zeros_like(p)).detach().contiguous()
            for (k, p), g in zip(params.items(), grads)}


# --- the AdapterHub methods and the architectures each is built on ---------------------------------------

class Case(NamedTuple):
    factory: Callable
    archs: tuple
    safe: bool = False         # save with safetensors (else pytorch_adapter.bin)
    lm_head: bool = True       # save the (frozen, tied) LM head beside it, as part 1's fixtures do
    eager: tuple = ()          # architectures built with eager attention (AdapterHub's SDPA path differs)
    scale: float = 0.3         # of the random offsets every adapter tensor gets


def methods():
    """name -> Case. Part 1's entries come first, in their order (each fixture's seed is its index)."""
    import adapters   # optional: only AdapterHub's venv has it
    every, encoders = ARCHS, ENCODERS
    return {k: Case(*v) if isinstance(v, tuple) else v for k, v in {
        "seq_bn": (lambda: adapters.SeqBnConfig(reduction_factor=4), every, False),
        # AdapterHub's own norms, learned scaling and the residual after the model's LayerNorm (.bin only:
        # AdapterHub's safetensors writer refuses the input norm, stored under two names)
        "seq_bn_options": (lambda: adapters.SeqBnConfig(reduction_factor=4, ln_before=True, ln_after=True,
                                                        scaling="learned", residual_before_ln=False,
                                                        mh_adapter=True, non_linearity="gelu"), every, False),
        "seq_bn_post_add": (lambda: adapters.SeqBnConfig(reduction_factor=4, residual_before_ln="post_add",
                                                         ln_after=True, adapter_residual_before_ln=True),
                            ("bert", "roberta", "bart"), False),
        "double_seq_bn": (lambda: adapters.DoubleSeqBnConfig(reduction_factor=4, leave_out=[1]), every, False),
        "par_bn": (lambda: adapters.ParBnConfig(), every, False),
        "par_bn_options": (lambda: adapters.ParBnConfig(mh_adapter=True, ln_after=True, scaling=2.0,
                                                        reduction_factor=4), every, True),
        "lora": (lambda: adapters.LoRAConfig(r=4, alpha=8), every, True),
        "lora_options": (lambda: adapters.LoRAConfig(r=2, alpha=6, attn_matrices=["q", "k", "v"],
                                                     intermediate_lora=True, output_lora=True, leave_out=[0]),
                         every, False),
        "ia3": (lambda: adapters.IA3Config(), every, False),
        "ia3_options": (lambda: adapters.IA3Config(alpha=2, attn_matrices=["q", "v"], output_lora=True),
                        every, True),
        "prompt_tuning": (lambda: adapters.PromptTuningConfig(prompt_length=3), encoders, False),
        "prompt_tuning_bos": (lambda: adapters.PromptTuningConfig(prompt_length=2, combine="prefix_after_bos"),
                              encoders, True),
        **part_two(adapters),
    }.items()}


def part_two(adapters) -> dict:
    """Compacter, invertible adapters, prefix tuning (after part 1's cases, so that their seeds stay)."""
    every = ARCHS
    # AdapterHub saves a Compacter's shared tensors only under a module path (`<base>.shared_parameters`,
    # loading.py:392); T5ForConditionalGeneration is its own base model, so they are never written there
    shared_ok = tuple(a for a in ARCHS if a != "t5")
    # AdapterHub's prefixes under SDPA (transformers 4.57's default) on GPT-2, Llama and BART: masked out
    # where the mask is boolean (it inverts it, prefix_tuning.py:608-615), misaligned by is_causal where the
    # causal mask is left out; its eager attention computes prefix tuning as designed
    eager = ("gpt2", "llama", "bart")
    return {
        "compacter": Case(lambda: adapters.CompacterConfig(reduction_factor=4), shared_ok, True, False),
        "compacter_pp": Case(lambda: adapters.CompacterPlusPlusConfig(reduction_factor=4, shared_W_phm=True,
                                                                      phm_rank=2), shared_ok, True, False),
        "compacter_options": Case(lambda: adapters.CompacterConfig(
            reduction_factor=4, phm_dim=2, shared_phm_rule=False, factorized_phm_rule=True, factorized_phm_W=False,
            phm_bias=False, ln_before=True, leave_out=[1]), every, False, False),
        "seq_bn_inv": Case(lambda: adapters.SeqBnInvConfig(reduction_factor=4), every, True, False),
        "double_seq_bn_inv": Case(lambda: adapters.DoubleSeqBnInvConfig(
            reduction_factor=4, inv_adapter_reduction_factor=4, non_linearity="gelu"), every, False, False),
        "prefix_tuning": Case(lambda: adapters.PrefixTuningConfig(prefix_length=2, bottleneck_size=8), every,
                              False, False, eager, 1.0),
        "prefix_tuning_flat": Case(lambda: adapters.PrefixTuningConfig(flat=True, prefix_length=3, leave_out=[1],
                                                                       cross_prefix=False),
                                   every, False, False, eager, 1.0),
        "prefix_tuning_options": Case(lambda: adapters.PrefixTuningConfig(
            prefix_length=2, bottleneck_size=4, non_linearity="relu", encoder_prefix=False, leave_out=[0]),
            SEQ2SEQ, False, False, eager, 1.0),
    }


def ah_model(arch: str, base: dict, eager: bool = False):
    """The tiny model in transformers 4.57 with the saved base weights, ready for AdapterHub."""
    import adapters   # optional: only AdapterHub's venv has it
    options = {"attn_implementation": "eager"} if eager else {}
    model = model_class(arch).from_config(tiny_config(arch), **options)
    model.load_state_dict(base, strict=False)   # tied weights appear once in the file
    adapters.init(model)
    return model.eval()


def owned(key: str, name: str) -> bool:
    return f".{name}." in key or key.endswith(f".{name}") or key.startswith(f"{name}.")


@torch.no_grad()
def randomize(model, name: str, seed: int, scale: float = 0.3) -> None:
    """Non-zero adapter weights: every tensor of the adapter moves off its initialization."""
    g = torch.Generator().manual_seed(seed)
    for key, param in model.named_parameters():
        if owned(key, name):
            param.add_(scale * torch.randn(param.shape, generator=g, dtype=param.dtype))


def adapter_parameters(model, saved: Path) -> dict:
    """AdapterHub's name -> parameter for each tensor it saved, each tensor once (the first of its names:
    AdapterHub saves a prefix pool under every layer's path too)."""
    weights = saved / "adapter.safetensors"
    keys = list(load_file(str(weights)) if weights.exists() else
                torch.load(saved / "pytorch_adapter.bin", weights_only=True))
    params, seen = {}, set()
    for key in keys:
        try:
            param = model.get_parameter(key)
        except AttributeError:      # a buffer, or a head tensor (saved in the head file)
            continue
        if id(param) not in seen:
            seen.add(id(param))
            params[key] = param
    return params


def write(out: Path) -> None:
    """Rewrites `base/` and the directories of the cases below, and nothing else in `out`."""
    torch.manual_seed(0)
    cases = methods()
    for folder in ["base", *(f"{arch}-{method}" for method, case in cases.items() for arch in case.archs)]:
        if (out / folder).exists():
            shutil.rmtree(out / folder)
    (out / "base").mkdir(parents=True)
    bases = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = model_class(arch).from_config(tiny_config(arch)).eval()
        batch = fixed_batch(arch)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        bases[arch] = state
        save_file(state, str(out / "base" / f"{arch}.safetensors"))
        out_logits = logits(model, batch)
        save_file({**batch, "logits": out_logits}, str(out / "base" / f"{arch}-batch.safetensors"))
        save_file({"probe": probe(arch, out_logits.shape)}, str(out / "base" / f"{arch}-probe.safetensors"))
    for seed, (method, case) in enumerate(cases.items()):
        for arch in case.archs:
            write_case(out, method, case, arch, bases[arch], 1000 + 17 * seed + ARCHS.index(arch))


def write_case(out: Path, method: str, case: Case, arch: str, base: dict, seed: int) -> None:
    model = ah_model(arch, base, eager=arch in case.eager)
    model.add_adapter(method, config=case.factory())
    randomize(model, method, seed, case.scale)
    if method == "seq_bn" and arch in ENCODERS:   # a trained task head, saved beside the adapter
        randomize(model, "classifier", 7)
    model.set_active_adapters(method)
    target = out / f"{arch}-{method}"
    # an LM head is tied to the embeddings, and safetensors refuses shared tensors
    head = arch in ENCODERS or (not case.safe and case.lm_head)
    model.save_adapter(str(target), method, with_head=head, use_safetensors=case.safe)
    batch = fixed_batch(arch)
    expected = logits(model, batch)
    save_file({"logits": expected}, str(target / "expected.safetensors"))
    no_dropout(model)
    save_file(gradients(model, batch, probe(arch, expected.shape), adapter_parameters(model, target)),
              str(target / "grads.safetensors"))
    print(f"wrote {target}")


# --- peftlab's side: export every fixture; AdapterHub's side: load the exports --------------------------

def export(out: Path) -> None:
    """(peftlab's venv) Each fixture loaded into peftlab and written back with pl.export_adapterhub."""
    import peftlab as pl   # optional: only peftlab's venv has it
    out.mkdir(parents=True, exist_ok=True)
    for fixture in sorted(p for p in FIXTURES.iterdir() if p.is_dir() and p.name != "base"):
        arch = fixture.name.split("-")[0]
        model = model_class(arch).from_config(tiny_config(arch)).eval()
        model.load_state_dict(load_file(str(FIXTURES / "base" / f"{arch}.safetensors")), strict=False)
        pl.load(model, fixture)
        batch = {k: v for k, v in load_file(str(FIXTURES / "base" / f"{arch}-batch.safetensors")).items()
                 if k != "logits"}
        name = next(iter(pl.adapters(model)))
        target = out / fixture.name
        pl.export_adapterhub(model, name, target)
        save_file({"logits": logits(model, batch)}, str(target / "peftlab.safetensors"))
        print(f"exported {fixture.name}")


def check(exports: Path) -> int:
    """(AdapterHub's venv) AdapterHub loads each export and computes peftlab's logits; AutoAdapterModel (its
    flexible-head classes) loads it too, with no missing or unexpected tensor."""
    import adapters   # optional: only AdapterHub's venv has it
    failures, cases = 0, methods()
    for target in sorted(p for p in exports.iterdir() if p.is_dir()):
        arch, method = target.name.split("-", 1)
        eager = method in cases and arch in cases[method].eager
        model = ah_model(arch, load_file(str(FIXTURES / "base" / f"{arch}.safetensors")), eager=eager)
        name = model.load_adapter(str(target), set_active=True)
        batch = {k: v for k, v in load_file(str(FIXTURES / "base" / f"{arch}-batch.safetensors")).items()
                 if k != "logits"}
        expected = load_file(str(target / "peftlab.safetensors"))["logits"]
        gap = (logits(model, batch) - expected).abs().max().item()
        info: dict = {}
        adapters.AutoAdapterModel.from_config(tiny_config(arch)).load_adapter(str(target), loading_info=info)
        leftovers = [k for keys in info.values() for k in keys]
        ok = gap <= 1e-5 and not leftovers
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {target.name}: AdapterHub loaded '{name}', max |logit gap| {gap:.2e}"
              f"{'; AutoAdapterModel left ' + str(leftovers[:3]) if leftovers else ''}")
    return failures


def main(argv=None) -> int:
    return run_steps(argv, __doc__, write, export, check, FIXTURES)


def run_steps(argv, doc: str, write_step, export_step, check_step, fixtures: Path) -> int:
    """The command line both fixture scripts share: `write [FOLDER]`, `export FOLDER`, `check FOLDER`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("step", choices=["write", "export", "check"])
    parser.add_argument("folder", nargs="?", default=None, help="exports folder (export, check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.step == "write":
        write_step(Path(args.folder) if args.folder else fixtures)
        return 0
    if args.folder is None:
        parser.error(f"{args.step} needs the exports folder")
    if args.step == "export":
        export_step(Path(args.folder))
        return 0
    failures = check_step(Path(args.folder))
    print(json.dumps({"failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
