"""benchmarks/quality_peers.py --smoke: the peers quality benchmark's whole code path (token file, worker
processes, the shared training loop, every method of peftlab and HF PEFT, the report and the plot) on a
tiny random BERT, in CI time. AdapterHub's runs join when benchmarks/.venv-adapters exists; without it the
run must record the skip and carry on."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_smoke import BENCH, DATA, NEEDS_GLUE_AND_MINILM

ADAPTERHUB = BENCH / ".venv-adapters" / "bin" / "python"


def method_labels() -> list[str]:
    """Every method of the benchmark's table (benchmarks/ is not a package: read from its folder)."""
    sys.path.insert(0, str(BENCH))
    try:
        from quality_peers_methods import method_labels as labels
    finally:
        sys.path.remove(str(BENCH))
    return labels()


pytestmark = NEEDS_GLUE_AND_MINILM


def _run(*args: str, cwd: Path = BENCH) -> None:
    out = subprocess.run([sys.executable, "quality_peers.py", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("quality_peers")
    _run("--smoke", "--work", str(folder / "work"), "--results-dir", str(folder / "results"),
         "--data-dir", str(DATA))
    return folder / "results", json.loads((folder / "results" / "quality_peers_smoke.json").read_text())


@pytest.fixture
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


def test_every_run_is_recorded_with_its_score_or_error(smoke):
    _, payload = smoke
    meta, runs = payload["meta"], payload["runs"]
    assert meta["mode"] == "smoke" and not meta["partial"] and meta["seeds"] == [42, 43]
    assert set(meta["budgets"]) == {"sst2", "rte", "sst2-x3"}
    expected = {"peftlab", "HF PEFT"} | ({"AdapterHub"} if ADAPTERHUB.exists() else set())
    assert set(meta["libraries"]) == expected
    if not ADAPTERHUB.exists():
        assert "AdapterHub" in meta["skipped"]
    for run in runs:
        assert {"task", "library", "method", "seed", "lr", "run_s"} <= set(run)
        if "error" not in run:
            assert 0.0 <= run["accuracy"] <= 100.0 and run["finite"]
            assert run["steps"] == meta["data"][run["task"]]["steps"] and run["s_per_step"] > 0
    keys = {(r["task"], r["method"], r["library"], r["seed"]) for r in runs}
    assert len(keys) == len(runs), "one record per run"
    # the main tasks: every method for peftlab; HF PEFT has its four methods and the bare model
    for task in ("sst2", "rte"):
        peftlab = {r["method"] for r in runs if r["task"] == task and r["library"] == "peftlab"}
        assert peftlab == set(method_labels())
        assert len({r["method"] for r in runs if r["task"] == task and r["library"] == "HF PEFT"}) == 5
    # the second budget: peftlab only
    assert {r["library"] for r in runs if r["task"] == "sst2-x3"} == {"peftlab"}


def test_peftlab_methods_all_train(smoke):
    _, payload = smoke
    runs = [r for r in payload["runs"] if r["library"] == "peftlab"]
    failed = [(r["method"], r["task"], r["error"]) for r in runs if "error" in r]
    assert not failed
    counts = {r["method"]: r["method_params"] for r in payload["runs"] if r["library"] == "peftlab"}
    assert counts["Full fine-tuning"] > 100 * counts["Houlsby (k=12)"] > 0


def test_report_and_rewrite(smoke):
    folder, _ = smoke
    md = (folder / "quality_peers_smoke.md").read_text()
    for heading in ("## Budget", "## Goals", "## Method mapping", "peftlab − best peer"):
        assert heading in md
    (folder / "quality_peers_smoke.md").unlink()
    (folder / "quality_peers_smoke.png").unlink()
    _run("--rewrite", "quality_peers_smoke", "--results-dir", str(folder))
    assert (folder / "quality_peers_smoke.md").read_text() == md
    assert (folder / "quality_peers_smoke.png").stat().st_size > 0


@pytest.mark.parametrize("library", ["peftlab", "HF PEFT"])
def test_train_pooler_trains_the_pooler_with_the_method_and_lr_overrides_every_run(smoke, bench_path, library):
    """The two checks of goal 2's cause: --train-pooler adds BERT's pooler to what trains (counted), --lr
    sets one learning rate for every run."""
    from types import SimpleNamespace
    import quality_peers
    from quality_peers_train import load_data, run_job
    from quality_peers_worker import attach_peft, attach_peftlab
    folder, payload = smoke
    data = load_data(str(folder.parent / "work" / "smoke" / "data.pt"))
    base = next(r for r in payload["runs"] if r["library"] == library and r["method"].startswith("LoRA")
                and r["task"] == "sst2" and r["seed"] == 42)
    job = {k: base[k] for k in ("task", "method", "library", "seed", "lr")}
    job.update(config=payload["meta"]["methods"][base["method"]]["configs"][library], max_steps=1)
    quality_peers.apply_checks([job], SimpleNamespace(lr=None, train_pooler=True))
    attach = attach_peftlab if library == "peftlab" else attach_peft
    record = run_job(job, data, attach, "cpu")
    hidden = 128       # the smoke model's
    assert record["trainable"] == base["trainable"] + hidden * hidden + hidden
    jobs = [dict(job, lr=0.1), dict(job, lr=0.2)]
    quality_peers.apply_checks(jobs, SimpleNamespace(lr=1e-3, train_pooler=False))
    assert [j["lr"] for j in jobs] == [1e-3, 1e-3] and not any(j["train_pooler"] for j in jobs)


def test_an_unknown_method_is_refused_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "quality_peers.py", "--methods", "Houlsby (k=12)", "LoRA (r=99)",
                          "--work", str(tmp_path / "w"), "--results-dir", str(tmp_path / "r")],
                         cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--methods: no method 'LoRA (r=99)'" in out.stderr.splitlines()[-1]
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


def test_named_methods_and_libraries_join_a_restricted_budget(bench_path):
    import quality_peers
    only = {"sst2-x3": {"libraries": ["peftlab"], "methods": ["Full fine-tuning"]}}
    rule = quality_peers.named_restriction(only, ["Pfeiffer (k=24)"], ["AdapterHub"])["sst2-x3"]
    assert rule == {"libraries": ["peftlab", "AdapterHub"], "methods": ["Full fine-tuning", "Pfeiffer (k=24)"]}
    assert quality_peers.named_restriction(only, None, None) == only


def test_the_cpu_mode_holds_sst2_and_one_whole_epoch_of_rte(bench_path):
    import quality_peers
    budgets = quality_peers.MODES["cpu"].budgets
    assert set(budgets) == {"sst2", "rte"}
    assert budgets["rte"].train is None and budgets["rte"].epochs >= 1 and budgets["rte"].max_length == 128


def _run_record(task, library, method, seed, accuracy):
    return {"task": task, "library": library, "method": method, "seed": seed, "accuracy": accuracy}


def test_more_seeds_cover_only_the_tasks_they_ran(bench_path):
    """Goal 1 over extra seeds: the extra file's tasks only (the main file's other task keeps its 3 seeds)."""
    import quality_peers_report as report
    main = {"meta": {"budgets": {"sst2": {}, "rte": {}}, "libraries": ["peftlab", "AdapterHub"]},
            "runs": [_run_record(t, lib, "Pfeiffer (k=12)", s, 80.0 + s % 3)
                     for t in ("sst2", "rte") for lib in ("peftlab", "AdapterHub") for s in (42, 43, 44)]}
    extra = {"meta": {"budgets": {"sst2": {}}, "wall_min": 3.0},
             "runs": [_run_record("sst2", lib, "Pfeiffer (k=12)", s, 81.0) for lib in ("peftlab", "AdapterHub")
                      for s in (45, 46)]}
    lines = report.more_seeds(main, extra)
    tables = [line for line in lines if line.startswith("| Pfeiffer")]
    assert len(tables) == 1 and "seeds 42–46 (5)" in lines[0]


def test_a_restricted_budget_is_titled_by_the_libraries_that_ran(bench_path):
    import quality_peers_report as report
    meta = {"glue_task": {"sst2-x3": "sst2"}, "data": {"sst2-x3": {"train_rows": 12000, "steps": 375}},
            "only": {"sst2-x3": {"libraries": ["peftlab", "AdapterHub"], "methods": []}},
            "libraries": ["AdapterHub"]}
    assert report.budget_title("sst2-x3", meta) == "sst2 (12,000 rows, 375 steps; a longer budget, AdapterHub only)"
    meta["libraries"] = ["peftlab", "HF PEFT", "AdapterHub"]
    meta["only"]["sst2-x3"]["libraries"] = ["peftlab"]
    assert report.budget_title("sst2-x3", meta).endswith("a longer budget, peftlab only)")


@pytest.mark.parametrize("full_accuracy, warned", [(54.0, True), (70.0, False)])
def test_a_task_where_full_fine_tuning_stays_at_chance_is_flagged(bench_path, full_accuracy, warned):
    import quality_peers_report as report
    meta = {"data": {"rte": {"majority": 53.2, "test_rows": 139}}}
    runs = [_run_record("rte", lib, "Full fine-tuning", s, full_accuracy + s % 2)
            for lib in ("peftlab", "HF PEFT") for s in (42, 43, 44)]
    lines = report.below_learning("rte", runs, meta)
    assert bool(lines) == warned
    if warned:
        assert "no library's full fine-tuning is clearly above the majority class" in lines[0]
