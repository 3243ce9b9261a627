"""AdapterHub parity fixtures (tests/fixtures/adapterhub/) and the export check, in three steps:

    benchmarks/.venv-adapters/bin/python scripts/adapterhub_fixtures.py write        # AdapterHub's side
    .venv/bin/python scripts/adapterhub_fixtures.py export DIR                        # peftlab's exports
    benchmarks/.venv-adapters/bin/python scripts/adapterhub_fixtures.py check DIR    # AdapterHub loads them

`write` builds tiny random BERT, RoBERTa, GPT-2, T5, BART and Llama models with transformers 4.57, saves
their weights (safetensors) and a fixed batch, adds each AdapterHub method with random non-zero weights
(seeded), and saves the adapter with AdapterHub's own `save_adapter` beside AdapterHub's logits.
`tests/test_adapterhub.py` rebuilds each base in transformers 5 from those weights, loads the adapter
with `pl.load` and compares the logits; it needs no AdapterHub install. `export` (peftlab's venv) loads
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

import torch
import transformers as tf
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "adapterhub"
ARCHS = ("bert", "roberta", "gpt2", "t5", "bart", "llama")
VOCAB = 96
ENCODERS, SEQ2SEQ = ("bert", "roberta"), ("t5", "bart")


def tiny_config(arch: str):
    """The configs of tests/tiny.py, spelled for transformers 4.57 (the values are the same)."""
    if arch == "t5":
        return tf.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
                           num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if arch == "bart":
        return tf.BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=32,
                             decoder_ffn_dim=32, encoder_attention_heads=4, decoder_attention_heads=4,
                             max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             decoder_start_token_id=2, forced_eos_token_id=None)
    if arch in ENCODERS:
        cls = tf.BertConfig if arch == "bert" else tf.RobertaConfig
        return cls(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=32, max_position_embeddings=64, pad_token_id=1, num_labels=3)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, n_positions=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "llama":
        return tf.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              bos_token_id=0, eos_token_id=0, pad_token_id=0)
    raise KeyError(arch)


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


# --- the AdapterHub methods and the architectures each is built on ---------------------------------------

def methods():
    """name -> (AdapterHub config factory, architectures, save with safetensors)."""
    import adapters   # optional: only AdapterHub's venv has it
    every, encoders = ARCHS, ENCODERS
    return {
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
    }


def ah_model(arch: str, base: dict):
    """The tiny model in transformers 4.57 with the saved base weights, ready for AdapterHub."""
    import adapters   # optional: only AdapterHub's venv has it
    model = model_class(arch).from_config(tiny_config(arch))
    model.load_state_dict(base, strict=False)   # tied weights appear once in the file
    adapters.init(model)
    return model.eval()


@torch.no_grad()
def randomize(model, name: str, seed: int) -> None:
    """Non-zero adapter weights: every tensor of the adapter moves off its initialization."""
    g = torch.Generator().manual_seed(seed)
    for key, param in model.named_parameters():
        if f".{name}." in key or key.endswith(f".{name}") or key.startswith(f"{name}."):
            param.add_(0.3 * torch.randn(param.shape, generator=g, dtype=param.dtype))


def write(out: Path) -> None:
    torch.manual_seed(0)
    if out.exists():
        shutil.rmtree(out)
    (out / "base").mkdir(parents=True)
    bases = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = model_class(arch).from_config(tiny_config(arch)).eval()
        batch = fixed_batch(arch)
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        bases[arch] = state
        save_file(state, str(out / "base" / f"{arch}.safetensors"))
        save_file({**batch, "logits": logits(model, batch)}, str(out / "base" / f"{arch}-batch.safetensors"))
    for seed, (method, (factory, archs, safe)) in enumerate(methods().items()):
        for arch in archs:
            model = ah_model(arch, bases[arch])
            model.add_adapter(method, config=factory())
            randomize(model, method, 1000 + 17 * seed + ARCHS.index(arch))
            if method == "seq_bn" and arch in ENCODERS:   # a trained task head, saved beside the adapter
                randomize(model, "classifier", 7)
            model.set_active_adapters(method)
            target = out / f"{arch}-{method}"
            # an LM head is tied to the embeddings, and safetensors refuses shared tensors
            head = arch in ENCODERS or not safe
            model.save_adapter(str(target), method, with_head=head, use_safetensors=safe)
            batch = fixed_batch(arch)
            save_file({"logits": logits(model, batch)}, str(target / "expected.safetensors"))
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
    failures = 0
    for target in sorted(p for p in exports.iterdir() if p.is_dir()):
        arch = target.name.split("-")[0]
        model = ah_model(arch, load_file(str(FIXTURES / "base" / f"{arch}.safetensors")))
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["write", "export", "check"])
    parser.add_argument("folder", nargs="?", default=None, help="exports folder (export, check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.step == "write":
        write(Path(args.folder) if args.folder else FIXTURES)
        return 0
    if args.folder is None:
        parser.error(f"{args.step} needs the exports folder")
    if args.step == "export":
        export(Path(args.folder))
        return 0
    failures = check(Path(args.folder))
    print(json.dumps({"failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
