#!/usr/bin/env bash
# The GPU quality mode on a lent H200, as one prepared command (docs/benchmarks_quality.md, "GPU mode").
# Here, once:   .venv/bin/python benchmarks/gpu/prepare.py      (makes .gpu/: the data and MiniLM)
# Then the device tool's run:  command "bash benchmarks/gpu/run.sh", carry [".gpu"], timeout_s 600.
# There: the image's python3 (torch, transformers >= 5.17, accelerate, scikit-learn, matplotlib); peftlab
# from src/. The sweep starts no run after 7.5 min, so the call ends inside its limit with room for a rerun.
set -uo pipefail
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
timeout 560 python3 benchmarks/quality.py --device cuda --part glue --model .gpu/minilm --data-dir .gpu/data \
  --work /tmp/quality-work --results-dir "$OUT" --max-minutes 7.5 --note "run by benchmarks/gpu/run.sh"
status=$?
(cd /tmp/quality-work/cuda 2>/dev/null && tar -czf "$OUT/worker_logs.tar.gz" chunk*.log) || true
exit $status
