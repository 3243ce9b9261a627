#!/usr/bin/env bash
# A separate environment for AdapterHub `adapters` 1.3, which pins transformers ~= 4.57 and so cannot
# share peftlab's (transformers 5.x). Created on first use by benchmarks/speed.py (and memory.py); the
# same torch as peftlab's venv, so both sides run the same kernels. Prints the venv's path.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.venv-adapters"
torch_version="${TORCH_VERSION:-2.13.0}"
if [ ! -f "$venv/.ready-$torch_version" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$torch_version" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "adapters==1.3.0" "transformers~=4.57.6" >&2
  touch "$venv/.ready-$torch_version"
fi
echo "$venv"
