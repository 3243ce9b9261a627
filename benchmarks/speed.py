"""Train-step speed of every method as a ratio to the frozen-backbone floor and to full fine-tuning,
with HF PEFT (same environment) and AdapterHub `adapters` (its own venv, see peers/) side by side.

    .venv/bin/python benchmarks/speed.py --quick          # minutes on 2 CPU cores
    .venv/bin/python benchmarks/speed.py                  # every model shape; much longer

Writes benchmarks/results/speed.md and speed.png. Random weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import peftlab as pl  # noqa: E402
from peftlab.errors import PeftlabError  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROMPT_LENGTH = 100

# Compacter-paper settings for the adapter family (k = d / 32); LoRA r = 8 on q, v.
METHODS = {
    "houlsby": {"method": "houlsby", "reduction_factor": 32},
    "pfeiffer": {"method": "pfeiffer", "reduction_factor": 32},
    "adapterdrop": {"method": "houlsby", "reduction_factor": 32, "leave_out": [0, 1, 2, 3, 4]},
    "low_rank": {"method": "low_rank_adapter", "reduction_factor": 32},
    "phm_adapter": {"method": "phm_adapter", "reduction_factor": 32},
    "compacter": {"method": "compacter", "reduction_factor": 32},
    "compacter++": {"method": "compacter++", "reduction_factor": 32},
    "lora": {"method": "lora", "r": 8, "alpha": 16},
    "ia3": {"method": "ia3"},
    "bitfit": {"method": "bitfit"},
    "prompt_tuning": {"method": "prompt_tuning", "length": PROMPT_LENGTH},
    "prefix_tuning": {"method": "prefix_tuning", "prefix_length": 30},
}
SAID = {"intrinsic_said": {"method": "intrinsic_said", "intrinsic_dim": 20000}}
ADAPTER_STYLE = ("houlsby", "pfeiffer", "adapterdrop", "low_rank", "phm_adapter", "compacter", "compacter++",
                 "lora", "ia3", "bitfit")


def peftlab_variants(preset: str, names) -> dict:
    out = {}
    for name in names:
        spec = {**METHODS, **SAID}[name]
        try:
            config = pl.config_from_dict({**spec, "train_head": False})
        except PeftlabError as err:
            print(f"  skip {name}: {err}")
            continue
        out[name] = lambda model, config=config: common.peftlab_method(model, config)
    return out


def peft_variants(model) -> dict:
    """HF PEFT's LoRA / IA3 / prompt / prefix on the same model (unloaded after each block)."""
    try:
        import peft
    except ImportError:
        return {}
    is_seq2seq = model.config.is_encoder_decoder
    task = "SEQ_2_SEQ_LM" if is_seq2seq else ("CAUSAL_LM" if "LM" in type(model).__name__ else "SEQ_CLS")
    configs = {
        "peft:lora": peft.LoraConfig(r=8, lora_alpha=16, task_type=task),
        "peft:ia3": peft.IA3Config(task_type=task),
        "peft:prompt_tuning": peft.PromptTuningConfig(num_virtual_tokens=PROMPT_LENGTH, task_type=task,
                                                       num_transformer_submodules=1),
        "peft:prefix_tuning": peft.PrefixTuningConfig(num_virtual_tokens=30, task_type=task),
    }

    @contextmanager
    def attach(model, config):
        peft_model = peft.get_peft_model(model, config)
        try:
            yield peft_model
        finally:
            peft_model.unload() if hasattr(peft_model, "unload") and config.peft_type.value in ("LORA", "IA3") else None
            for p in model.parameters():
                p.requires_grad_(True)

    return {name: (lambda model, config=config: attach(model, config)) for name, config in configs.items()}


def measure(preset: str, names, batch_size: int, seq_len: int, reps: int, steps: int, peers: bool) -> dict:
    model = common.build(preset)
    batches = {"default": common.batch_for(model, batch_size, seq_len)}
    longer = common.batch_for(model, batch_size, seq_len + PROMPT_LENGTH)
    variants = {"floor": common.floor, "full": common.full_finetune, "floor@+prompt": common.floor}
    batches["floor@+prompt"] = longer
    variants.update(peftlab_variants(preset, names))
    if peers:
        variants.update(peft_variants(model))
    bar = tqdm(total=reps * len(variants), desc=preset, unit="block")
    medians = common.interleaved_medians(variants, model, batches, reps, steps, progress=lambda _: bar.update())
    bar.close()
    return medians


def adapterhub(preset: str, batch_size: int, seq_len: int, reps: int, steps: int) -> dict:
    """AdapterHub's methods and its own floor, timed in its own venv (created on first use)."""
    here = Path(__file__).parent
    venv = subprocess.run(["bash", str(here / "peers" / "setup_adapterhub.sh")], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    preset_file = Path(pl.__file__).parent / "presets" / f"{preset}.json"
    out = subprocess.run([f"{venv}/bin/python", str(here / "peers" / "adapterhub_worker.py"), "--config-json",
                          str(preset_file), "--batch-size", str(batch_size), "--seq-len", str(seq_len),
                          "--reps", str(reps), "--steps", str(steps)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _floor_of(name: str, medians: dict) -> float:
    return medians["adapterhub:floor"] if name.startswith("adapterhub:") else medians["floor"]


def to_markdown(results: dict, meta: dict) -> str:
    lines = [f"# Train-step speed: ratios to the frozen-backbone floor", "",
             f"{meta['machine']}; batch {meta['batch_size']} x {meta['seq_len']} tokens; "
             f"median of {meta['reps']} x {meta['steps']} steps per variant, interleaved.", "",
             "The floor is the same model and batch with one trainable scalar on the input embeddings: the "
             "cost of forward and backward through activations, which no PEFT method can beat. Prompt methods "
             f"are also compared with the floor at the {PROMPT_LENGTH} extra tokens they imply (floor@+prompt).", ""]
    for preset, medians in results.items():
        full = medians["full"]
        lines += [f"## {preset}", "", "| variant | ms / step | × floor | × full FT |", "|---|---|---|---|"]
        for name, t in sorted(medians.items(), key=lambda kv: kv[1]):
            lines.append(f"| {name} | {1000 * t:.1f} | {t / _floor_of(name, medians):.3f} | {t / full:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.2 * len(results)), squeeze=False)
    for ax, (preset, medians) in zip(axes[:, 0], results.items()):
        names = sorted(medians, key=medians.get)
        ax.barh(names, [medians[n] / _floor_of(n, medians) for n in names], color="tab:blue")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.05, color="tab:red", lw=0.8, ls="--", label="1.05 × floor")
        ax.set_title(preset)
        ax.set_xlabel("train-step time / frozen-backbone floor")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="t5-small only, small batch, few reps")
    parser.add_argument("--models", nargs="*", help="presets (default: t5-small t5-base bert-base-uncased gpt2 smollm2-135m)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--no-peers", action="store_true", help="skip HF PEFT")
    parser.add_argument("--adapterhub", action="store_true", help="also time AdapterHub in its own venv")
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    quick = dict(batch_size=4, seq_len=64, reps=3, steps=3) if args.quick else dict(batch_size=8, seq_len=128, reps=5, steps=5)
    models = args.models or (["t5-small"] if args.quick else ["t5-small", "t5-base", "bert-base-uncased", "gpt2", "smollm2-135m"])
    results = {}
    for preset in models:
        names = list(args.methods) + (["intrinsic_said"] if preset == "t5-small" else [])
        results[preset] = measure(preset, names, peers=not args.no_peers, **quick)
        if args.adapterhub:
            results[preset].update(adapterhub(preset, **quick))
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                       f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
            **quick}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(results, meta))
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    plot(results, out.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
