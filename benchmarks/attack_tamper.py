"""Attack 3: tampered files. Saved adapters (peftlab_config.json, peftlab_weights.safetensors) are loaded
with pl.load, and a finished run whose checkpoints/last (trainable.safetensors, optimizer.pt,
trainer_state.json) or log.jsonl was tampered with is resumed with `peftlab train --resume`. A tampered
file must be refused in one line naming it, with the model and the folder unchanged; the few edits that
are harmless (a torn log line, a missing digest) must load or resume to the same result."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from attack_common import api_verdict, cli_verdict, isolated, lost, outcome_of, record, settle, snapshot
from attack_fixtures import config_for, copy_run
from attack_launch import same_weights
from attack_tamper_edits import ADAPTER_EDITS, RUN_EDITS, edit_adapter, edit_run

ADAPTERS = [("llama", {"method": "lora", "r": 2}), ("t5", {"method": "houlsby", "reduction_factor": 4}),
            ("bert", {"method": "ia3"}), ("gpt2", {"method": "compacter", "reduction_factor": 4, "phm_dim": 2})]
MARKER = "peftlab-run.json"


def generate(count: int, seed: int) -> list[dict]:
    """Every run edit once, then adapter edits over the saved adapters until `count`."""
    cases = [{"target": "run", "edit": edit, "expect": expect} for edit, expect in RUN_EDITS.items()]
    rng = random.Random(seed)
    adapter_cases = [{"target": "adapter", "adapter": index, "edit": edit, "expect": expect}
                     for index in range(len(ADAPTERS)) for edit, expect in ADAPTER_EDITS.items()]
    rng.shuffle(adapter_cases)
    cases += adapter_cases[: max(count - len(cases), 0)]
    return cases[:count]


def setup(shared: dict) -> None:
    """Two saved adapters per (architecture, method) and a second finished run (another seed), and the
    reference: the finished run resumed to step 3 untouched."""
    def save_all():
        import peftlab as pl
        from attack_api_ops import trained_looking
        from tiny import tiny_model
        for index, (arch, config) in enumerate(ADAPTERS):
            for copy, seed in (("a", 1), ("b", 2)):
                model = pl.attach(tiny_model(arch), pl.config_from_dict(config), name="a")
                trained_looking(model, seed)
                pl.save(model, Path(shared["work"]) / "adapters" / f"{index}-{copy}", name="a")
        return True
    work = Path(shared["work"])
    _must(isolated(save_all, timeout=300))
    other = work / "other-run"        # the same run with another seed: same shapes, other values
    _must(isolated(_train, ["train", str(config_for(shared, other, work, seed=4))], str(work), timeout=300))
    shared["other_run"] = str(other)
    reference = copy_run(shared["finished_run"], work / "reference-run")
    config = config_for(shared, reference, work)
    _must(isolated(_train, ["train", str(config), "train.max_steps=3", "--resume"], str(work), timeout=300))
    shared["reference_run"] = str(reference)


def _must(result: dict) -> None:
    """A setup step returned True or {"code": 0}; anything else stops the attack (it would measure nothing)."""
    value = result.get("value")
    if result["status"] != "returned" or not (value is True or (isinstance(value, dict) and value.get("code") == 0)):
        raise RuntimeError(f"the tampering attack's setup failed: {result}")


def _train(argv: list[str], cwd: str) -> dict:
    from peftlab.cli import main
    os.chdir(cwd)
    return {"code": main(argv)}


def _load(directory: str, arch: str, pristine: str) -> dict:
    """pl.load in the child; an accepted adapter must hold exactly the pristine adapter's tensors."""
    import torch
    import peftlab as pl
    from attack_api_ops import attempt
    from peftlab.core import adapter_state
    from tiny import tiny_model
    model = tiny_model(arch)
    result = attempt(model, lambda: pl.load(model, directory))
    if result["verdict"] != "ok":
        return result
    reference = pl.load(tiny_model(arch), pristine)
    ours, theirs = adapter_state(model, "a"), adapter_state(reference, "a")
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    return {"verdict": "ok" if same else "garbage", "message": "" if same else "loaded tensors that were never saved"}


def run_case(number: int, case: dict, shared: dict, timeout: float) -> dict:
    case_dir = Path(shared["work"]) / "tamper" / f"case-{number:03d}"
    case_dir.mkdir(parents=True)
    if case["target"] == "adapter":
        verdict, result = _adapter_case(case, case_dir, shared, timeout)
    else:
        verdict, result = _run_case(case, case_dir, shared, timeout)
    if verdict[0] in ("ok", "refused"):
        shutil.rmtree(case_dir, ignore_errors=True)
    return record("tamperings", number, case, verdict, result["seconds"], outcome_of(result))


def _adapter_case(case: dict, case_dir: Path, shared: dict, timeout: float):
    arch = ADAPTERS[case["adapter"]][0]
    adapters = Path(shared["work"]) / "adapters"
    target = case_dir / "adapter"
    shutil.copytree(adapters / f"{case['adapter']}-a", target)
    edit_adapter(case["edit"], target, adapters / f"{case['adapter']}-b")
    before = snapshot(target)
    result = isolated(_load, str(target), arch, str(adapters / f"{case['adapter']}-a"), timeout=timeout)
    failed = api_verdict(result)
    if failed is not None:
        return failed, result
    value = result["value"]
    if value["verdict"] == "garbage":
        return ("silent_garbage", value["message"]), result
    changed = value.get("changed") or lost(before, snapshot(target))
    verdict = settle(case["expect"], value["verdict"], value["message"], changed)
    return _names_the_file(verdict, case), result


def _run_case(case: dict, case_dir: Path, shared: dict, timeout: float):
    run = copy_run(shared["finished_run"], case_dir / "run")
    config = config_for(shared, run, case_dir)
    edit_run(case["edit"], run, Path(shared["other_run"]))
    skip = (MARKER,)
    before = snapshot(run, skip=skip)
    outside = snapshot(Path(shared["other_run"]), skip=skip)
    result = isolated(_train, ["train", str(config), "train.max_steps=3", "--resume"], str(case_dir),
                      timeout=timeout)
    verdict, message = cli_verdict(result)
    changed = lost(outside, snapshot(Path(shared["other_run"]), skip=skip))
    changed = f"another run's {changed}" if changed else None
    if verdict == "refused":
        changed = changed or lost(before, snapshot(run, skip=skip))
    elif verdict == "ok" and case["expect"] == "valid":
        if changed:
            return ("lost_data", f"resumed, but {changed}"), result
        if same_weights(run, Path(shared["reference_run"])):
            return ("silent_garbage", "resumed to weights other than the untampered run's"), result
    return _names_the_file(settle(case["expect"], verdict, message, changed), case), result


def _names_the_file(verdict: tuple[str, str], case: dict) -> tuple[str, str]:
    """A refusal should name the file it refused; one that does not is noted (not a bad class)."""
    kind, message = verdict
    wanted = {"weights": "peftlab_weights", "config": "peftlab_config", "ckpt_weights": "trainable.safetensors",
              "ckpt_optimizer": "optimizer.pt", "ckpt_state": "trainer_state.json", "log": "log.jsonl"}
    prefix = case["edit"].split(":")[0]
    if kind == "refused" and prefix in wanted and wanted[prefix] not in message:
        return kind, f"{message} [does not name {wanted[prefix]}]"
    return verdict
