"""Write the exact versions of a tested environment as pip constraints (`constraints.txt`).

    python scripts/freeze_tested.py .venv-latest > constraints.txt

The editable peftlab itself and pip's own tools are left out; torch is written without its local tag
(`2.13.0`, which pip matches to the `2.13.0+cpu` wheel)."""
from __future__ import annotations

import subprocess
import sys
from datetime import date

SKIP = {"peftlab", "pip", "setuptools", "wheel"}


def main(venv: str) -> None:
    python = f"{venv}/bin/python"
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
                            check=True, capture_output=True, text=True).stdout.split()
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    print(f"# The exact environment `make test` passed with (Python {version}, {date.today()}).")
    print("# `make setup` installs these; `make test-latest` tries the newest allowed releases and")
    print("# `make lock` rewrites this file from that environment once its tests pass.")
    for line in sorted(frozen, key=str.lower):
        name = line.split("==")[0].lower().replace("_", "-")
        if "==" not in line or name in SKIP:
            continue
        print(line.split("+")[0] if name == "torch" else line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv")
