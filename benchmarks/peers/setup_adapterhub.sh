#!/usr/bin/env bash
# A separate environment for AdapterHub `adapters` 1.3, which pins transformers ~= 4.57 and so cannot
# share peftlab's (transformers 5.x). Created on first use by benchmarks/speed.py --adapterhub.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.venv-adapters"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$venv/bin/python" -m pip install -q --disable-pip-version-check "adapters==1.3.0" "transformers~=4.57.6"
echo "$venv"
