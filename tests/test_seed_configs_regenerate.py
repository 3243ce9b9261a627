"""configs/{compacter,attempt,kernel,multi_adapter} are what `peftlab translate` makes of the seeds'
originals (scripts/seed_configs.py): regenerating them changes nothing, so they cannot drift."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT.parent / "shared" / "seed-configs"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seed-configs is absent")
def test_the_shipped_seed_configs_are_the_translations_of_the_originals():
    spec = importlib.util.spec_from_file_location("seed_configs", ROOT / "scripts" / "seed_configs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    files = script.generated(SEEDS.resolve())
    assert len(files) == 33
    for path, text in files.items():
        assert (ROOT / path).read_text() == text, f"{path} differs: run scripts/seed_configs.py"
    for folder in {p.parent for p in files}:
        shipped = {p.relative_to(ROOT) for p in (ROOT / folder).glob("*.yaml")}
        assert shipped == {p for p in files if p.parent == folder}, f"{folder} holds configs no original makes"
