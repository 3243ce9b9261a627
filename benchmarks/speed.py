"""Train-step speed and peak training memory of every method as ratios to the frozen-backbone floor and
to full fine-tuning, with HF PEFT (same environment) and AdapterHub `adapters` (its own venv, created
by peers/setup_adapterhub.sh on first use) side by side on the same model shape and batch.

    .venv/bin/python benchmarks/speed.py --quick                      # t5-small, few variants
    nice -n 5 .venv/bin/python benchmarks/speed.py                     # every shape (see PLANS); long
    .venv/bin/python benchmarks/speed.py --render                      # md + png from the saved json

Writes benchmarks/results/speed.json (after every shape), speed.md and speed.png. Random weights (speed
does not depend on them). Memory: see benchmarks/memory.py for the definition.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
import peftlab as pl  # noqa: E402
from peers import hf_peft  # noqa: E402
from peftlab.errors import PeftlabError  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PROMPT_LENGTH = hf_peft.PROMPT_LENGTH

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
    "prefix_tuning": {"method": "prefix_tuning", "prefix_length": hf_peft.PREFIX_LENGTH},
    "intrinsic_said": {"method": "intrinsic_said", "intrinsic_dim": 20000},
}
BASES = ("floor", "full", "floor@+prompt")
PEFT = ("peft:lora", "peft:ia3", "peft:prompt_tuning", "peft:prefix_tuning")
ADAPTERHUB = ("adapterhub:floor", "adapterhub:houlsby", "adapterhub:pfeiffer", "adapterhub:compacter",
              "adapterhub:compacter++", "adapterhub:lora", "adapterhub:ia3", "adapterhub:prefix_tuning")
EVERYTHING = (*BASES, *[m for m in METHODS if m != "intrinsic_said"], *PEFT, *ADAPTERHUB)
# What the other shapes get so that the whole run fits about 45 minutes on one CPU thread of a shared
# 2-core machine: the adapter family's main members, the low-rank methods and BitFit, with their peers.
CORE = ("floor", "full", "houlsby", "compacter++", "lora", "ia3", "bitfit", "peft:lora", "peft:ia3",
        "adapterhub:floor", "adapterhub:houlsby", "adapterhub:compacter++", "adapterhub:lora", "adapterhub:ia3")
MEMORY = ("floor", "full", "floor@+prompt", "houlsby", "pfeiffer", "compacter", "compacter++", "lora", "ia3",
          "bitfit", "prompt_tuning", "prefix_tuning", *PEFT, *ADAPTERHUB)
MEMORY_CORE = ("floor", "full", "houlsby", "compacter++", "lora", "ia3", "peft:lora", "peft:ia3",
               "adapterhub:floor", "adapterhub:houlsby", "adapterhub:compacter++", "adapterhub:lora", "adapterhub:ia3")
MEMORY_LORA = ("floor", "full", "lora", "peft:lora", "adapterhub:floor", "adapterhub:lora")
# shape -> (timed variants, variants whose peak memory is measured)
PLANS = {"t5-small": (EVERYTHING, MEMORY), "t5-base": (CORE, MEMORY_LORA), "bert-base-uncased": (CORE, MEMORY_LORA),
         "gpt2": (CORE, MEMORY_LORA), "smollm2-135m": (CORE, MEMORY_LORA)}


def config_file(shape: str) -> Path:
    """A preset's JSON, or config.json of a directory (tiny shapes for development)."""
    path = Path(shape)
    return path / "config.json" if path.is_dir() else Path(pl.__file__).parent / "presets" / f"{shape}.json"


def compacter_reduction(hidden: int) -> float:
    """32 (the paper's k = d / 32) unless phm_dim 4 does not divide d / 32 (SmolLM2: d = 576, k = 18);
    then the nearest k that it divides (16 there). Both sides of a comparison use the same."""
    k = hidden // 32
    return 32.0 if k % 4 == 0 else hidden / (4 * max(1, round(k / 4)))


def method_spec(name: str, model) -> dict:
    spec = dict(METHODS[name])
    if name in ("compacter", "compacter++"):
        spec["reduction_factor"] = compacter_reduction(model.config.hidden_size)
    return spec


def all_variants(model, names) -> dict:
    """name -> ctx(model) for common.interleaved_medians, for the names that run in this process."""
    out = {"floor": common.floor, "full": common.full_finetune, "floor@+prompt": common.floor}
    out = {k: v for k, v in out.items() if k in names}
    for name in names:
        if name in METHODS and (config := _attachable(model, name)) is not None:
            out[name] = lambda model, config=config: common.peftlab_method(model, config)
    out.update(hf_peft.train_variants(model, [n for n in names if n.startswith("peft:")]))
    return out


SKIPPED: dict[str, str] = {}    # variant -> why it did not run on the current shape


def _attachable(model, name: str):
    """The method's config, or None (with the reason printed) when it does not fit this shape."""
    config = pl.config_from_dict({**method_spec(name, model), "train_head": False})
    try:
        with common.peftlab_method(model, config):
            return config
    except PeftlabError as err:
        print(f"  skip {name}: {err}", file=sys.stderr)
        SKIPPED[name] = str(err)
        return None


def batches_for(model, batch_size: int, seq_len: int) -> dict:
    """The batch, and the floor@+prompt batch: PROMPT_LENGTH more input tokens and, on encoder-decoders,
    the same targets (a prompt lengthens the encoder's input, not the decoder's)."""
    default = common.batch_for(model, batch_size, seq_len)
    longer = common.batch_for(model, batch_size, seq_len + PROMPT_LENGTH)
    if model.config.is_encoder_decoder:
        longer["labels"] = default["labels"]
    return {"default": default, "floor@+prompt": longer}


def time_in_process(shape: str, names, batch_size: int, seq_len: int, reps: int, steps: int) -> dict:
    model = common.build(shape)
    batches = batches_for(model, batch_size, seq_len)
    variants = all_variants(model, names)
    with common.floor(model):     # the process's first steps are slow (allocator, lazy init): not timed
        common.step_clocks_timer(model, batches["default"])(1)
    bar = tqdm(total=reps * len(variants), desc=shape, unit="block")
    medians = common.interleaved_clock_medians(variants, model, batches, reps, steps, progress=lambda _: bar.update())
    bar.close()
    return medians


def adapterhub_python() -> str:
    venv = subprocess.run(["bash", str(HERE / "peers" / "setup_adapterhub.sh")], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    return f"{venv}/bin/python"


def time_adapterhub(shape: str, names, batch_size: int, seq_len: int, reps: int, steps: int) -> dict:
    """AdapterHub's methods and its own floor (its backbone is transformers 4.57's), timed in its venv."""
    methods = [n.removeprefix("adapterhub:") for n in names if n.startswith("adapterhub:") and n != "adapterhub:floor"]
    if not methods:
        return {}
    out = subprocess.run([adapterhub_python(), str(HERE / "peers" / "adapterhub_worker.py"), "--config-json",
                          str(config_file(shape)), "--batch-size", str(batch_size), "--seq-len", str(seq_len),
                          "--reps", str(reps), "--steps", str(steps), "--threads", str(torch.get_num_threads()),
                          "--compacter-reduction-factor", str(compacter_reduction(hidden_size(shape))),
                          "--methods", *methods], check=True, capture_output=True, text=True)
    for line in out.stderr.splitlines():
        if line.startswith("skip "):
            name, _, why = line.removeprefix("skip ").partition(": ")
            SKIPPED[name] = why
    return json.loads(out.stdout)


def hidden_size(shape: str) -> int:
    from peftlab.models import load_config
    return load_config(shape).hidden_size


def run_shape(shape: str, names, memory_names, args) -> dict:
    import memory
    SKIPPED.clear()
    size = dict(batch_size=args.batch_size, seq_len=args.seq_len)
    started = time.perf_counter()
    clocks = time_in_process(shape, names, reps=args.reps, steps=args.steps, **size)
    clocks.update(time_adapterhub(shape, names, reps=args.reps, steps=args.steps, **size))
    timed = time.perf_counter() - started
    peaks = {}
    if not args.no_memory:
        wanted = [n for n in names if n in memory_names]
        wanted = ["floor"] * ("floor" not in wanted and "floor@+prompt" not in wanted) + wanted   # ratios need floors
        if any(n.startswith("adapterhub:") for n in wanted) and "adapterhub:floor" not in wanted:
            wanted.append("adapterhub:floor")
        bar = tqdm(total=len(wanted), desc=f"{shape} memory", unit="process")
        peaks = memory.measure_all(shape, wanted, threads=torch.get_num_threads(), progress=lambda _: bar.update(),
                                   **size)
        bar.close()
    return {"step_s": {k: v["cpu"] for k, v in clocks.items()}, "step_wall_s": {k: v["wall"] for k, v in clocks.items()},
            "peak_bytes": peaks, "skipped": dict(SKIPPED),
            "wall_s": {"timing": round(timed), "memory": round(time.perf_counter() - started - timed)}}


def merge_rerun(saved: dict, fresh: dict) -> dict:
    """A rerun of some variants replaces their numbers. Only for variants whose ratios are taken within the
    rerun (e.g. prompt tuning with floor@+prompt, without `floor`), so no ratio mixes two runs."""
    for key in ("step_s", "step_wall_s", "peak_bytes"):
        saved[key] = {**saved.get(key, {}), **fresh[key]}
    saved.setdefault("reruns", []).append({"variants": list(fresh["step_s"]), **fresh["meta"]})
    return saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="t5-small, a few variants, 2 x 2 steps")
    parser.add_argument("--models", nargs="*", help=f"shapes: presets or config dirs (default: {' '.join(PLANS)})")
    parser.add_argument("--variants", nargs="*", help="variant names (default: PLANS per shape)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--merge", action="store_true", help="merge --variants into the shape's saved results")
    parser.add_argument("--render", action="store_true", help="only write md + png from the saved json")
    parser.add_argument("--out", default=str(RESULTS / "speed.md"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        return render(out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        args.reps, args.steps, args.models = 2, 2, args.models or ["t5-small"]
        args.variants = args.variants or ["floor", "full", "lora", "peft:lora", "adapterhub:lora"]
    saved = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    results = saved.get("results", {})
    meta = {"machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
                       + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
            "batch_size": args.batch_size, "seq_len": args.seq_len, "reps": args.reps, "steps": args.steps,
            "command": " ".join(["benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])])}
    for shape in args.models or list(PLANS):
        names, memory_names = (args.variants, args.variants) if args.variants else PLANS.get(shape, (CORE, MEMORY_LORA))
        fresh = {**run_shape(shape, names, memory_names, args), "meta": meta}
        results[shape] = merge_rerun(results[shape], fresh) if args.merge and shape in results else fresh
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"results": results}, indent=1))
    render(out)


def render(out: Path) -> None:
    import speed_report
    saved = json.loads(out.with_suffix(".json").read_text())
    out.write_text(speed_report.to_markdown(saved["results"], notes=out.with_name(out.stem + "_notes.md"),
                                            image=out.with_suffix(".png").name))
    speed_report.plot(saved["results"], out.with_suffix(".png"))
    print(out.read_text())


if __name__ == "__main__":
    main()
