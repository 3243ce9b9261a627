"""Makes .gpu/ (git-ignored) for `quality.py --device cuda` on a lent GPU machine, which reaches no
network and receives at most 64 MiB besides the repository: the five GLUE tasks' train and dev files
(7.6 MB) and MiniLM with its weights stored in float16 (45 MB instead of 91; loaded back as float32
there, each weight within 2^-11 of its value, below the bf16 rounding the GPU mode trains with).

    .venv/bin/python benchmarks/gpu/prepare.py          # then: benchmarks/gpu/run.sh there (its doc)
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("SST-2", "CoLA", "MRPC", "STS-B", "RTE")


def copy_data(source: Path, target: Path) -> None:
    for task in TASKS:
        (target / "glue" / task).mkdir(parents=True, exist_ok=True)
        for split in ("train.tsv", "dev.tsv"):
            shutil.copyfile(source / "glue" / task / split, target / "glue" / task / split)


def half_minilm(target: Path) -> None:
    import torch
    import transformers as tf
    from peftlab.models import offline_path
    source = offline_path("minilm")
    if source is None:
        raise SystemExit("the offline MiniLM package is not installed (README set-up)")
    model = tf.AutoModel.from_pretrained(source, dtype=torch.float32).half()
    model.save_pretrained(target)
    tf.AutoTokenizer.from_pretrained(source).save_pretrained(target)
    config = json.loads((target / "config.json").read_text())
    config["dtype"] = "float32"      # loaded back as float32 (transformers' default dtype is the config's)
    (target / "config.json").write_text(json.dumps(config, indent=2))


def main(argv=None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    out = ROOT / ".gpu"
    data = Path(args[0]) if args else ROOT.parent / "shared" / "data"
    copy_data(data, out / "data")
    half_minilm(out / "minilm")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
