"""Attack 2: generated API calls on tiny t5 / bert / gpt2 / llama models: pl.attach with a config whose
field is set to a value known valid or invalid (attack_methods.py) for every registered method, attach
of things that are no config or under a bad name, save / load, merge / unmerge, detach and composition
(Stack, Fuse, WeightedSum, Average, BatchSplit, ParallelBlock). Oracle: a valid call works (finite
outputs, a bit-exact save / load round trip), an invalid one is one line and changes nothing."""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch

import peftlab as pl
from attack_api_ops import attempt, check_attached, detach_ops, merge_ops, outputs, save_load, trained_looking
from attack_common import api_verdict, isolated, outcome_of, record, settle
from attack_methods import field_values
from peftlab.registry import contract_cases, get_method
from tiny import tiny_batch, tiny_model

ARCHS = ("t5", "bert", "gpt2", "llama")
SIMPLE = [{"method": "lora", "r": 2}, {"method": "houlsby", "reduction_factor": 4}, {"method": "ia3"}]
MERGEABLE = [{"method": "lora", "r": 2}, {"method": "ia3"}]
# op: (share of the calls, variants as (name, expected))
OPS = {
    "save_load": (0.12, [("same", "valid"), ("save_over_existing", "valid"), ("other_arch", "invalid"),
                         ("strict_false_other_arch", "invalid"), ("dup_name", "invalid"), ("missing_dir", "invalid"),
                         ("file_path", "invalid"), ("empty_dir", "invalid"), ("bad_name", "invalid"),
                         ("load_twice", "invalid"), ("save_unknown_name", "invalid"), ("save_into_file", "invalid"),
                         ("save_no_adapters", "invalid")]),
    "merge": (0.08, [("mergeable", "valid"), ("twice", "valid"), ("unmerge_unmerged", "valid"),
                     ("merge_then_detach", "valid"), ("unmergeable", "invalid"), ("unknown_name", "invalid"),
                     ("non_finite", "invalid")]),
    "detach": (0.05, [("valid", "valid"), ("unknown", "invalid"), ("none_attached", "invalid"), ("twice", "invalid")]),
    "compose": (0.09, [("stack_ok", "valid"), ("fuse_ok", "valid"), ("wsum_ok", "valid"), ("average_ok", "valid"),
                       ("batchsplit_ok", "valid"), ("parallel_ok", "valid"), ("stack_unknown", "invalid"),
                       ("fuse_dup", "invalid"), ("wsum_bad_mode", "invalid"), ("average_bad_weights", "invalid"),
                       ("average_nan_weights", "invalid"), ("average_mixed", "invalid"),
                       ("batchsplit_negative", "invalid"), ("batchsplit_wrong_rows", "invalid"),
                       ("activate_nonstring", "invalid"), ("activate_unknown", "invalid"), ("nested_bad", "invalid")]),
    "attach_bad": (0.06, [("config_none", "invalid"), ("config_str", "invalid"), ("config_dict", "invalid"),
                          ("config_int", "invalid"), ("config_class", "invalid"), ("name_empty", "invalid"),
                          ("name_digit", "invalid"), ("name_dot", "invalid"), ("name_int", "invalid"),
                          ("name_space", "invalid"), ("name_taken", "invalid")]),
}


def applicable() -> dict[str, list[str]]:
    """{method: the tiny architectures its example config applies to} (computed in a child)."""
    def probe():
        with tempfile.TemporaryDirectory() as tmp:
            return {m: [a for a in ARCHS if contract_cases(m, tiny_model(a), _folder(Path(tmp) / f"{m}-{a}"))
                        is not None] for m in pl.method_names()}
    result = isolated(probe, timeout=300)
    if result["status"] != "returned":
        raise RuntimeError(f"probing the methods failed: {result}")
    return result["value"]


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def generate(count: int, seed: int, methods: dict[str, list[str]]) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for op, (share, variants) in OPS.items():
        for i in range(round(share * count)):
            variant, expect = variants[i % len(variants)]
            pool = MERGEABLE if op == "merge" and variant != "unmergeable" else SIMPLE
            config = {"method": "houlsby", "reduction_factor": 4} if variant == "unmergeable" else rng.choice(pool)
            cases.append({"op": op, "variant": variant, "arch": rng.choice(ARCHS), "config": config, "expect": expect})
    usable = sorted(m for m, archs in methods.items() if archs)
    while len(cases) < count:
        method = rng.choice(usable)
        fields = field_values(get_method(method).config_cls, get_method(method).config_cls.compat_choices)
        field = rng.choice(sorted(fields))
        valid, invalid, either = fields[field]
        pick = rng.random()
        if either and pick < 0.1:
            value, expect = rng.choice(either), "either"
        elif invalid and (pick < 0.55 or not valid):
            value, expect = rng.choice(invalid), "invalid"
        else:
            value, expect = rng.choice(valid), "valid"
        cases.append({"op": "attach", "method": method, "arch": rng.choice(methods[method]), "field": field,
                      "value": value, "expect": expect})
    rng.shuffle(cases)
    return cases[:count]


# --- the calls (in the child) -------------------------------------------------------------------------

def attach_config(case: dict, tmp: Path) -> dict:
    arch, method = case["arch"], case["method"]
    base = contract_cases(method, tiny_model(arch), _folder(tmp / "example"))
    cls = get_method(method).config_cls
    model = tiny_model(arch)

    def call():
        pl.attach(model, cls.from_dict({**base.to_dict(), case["field"]: case["value"]}), name="x")
    result = attempt(model, call)
    return check_attached(model, arch, "x", tmp) if result["verdict"] == "ok" else result


def attach_bad(case: dict, tmp: Path) -> dict:
    model, variant = tiny_model(case["arch"]), case["variant"]
    configs = {"config_none": None, "config_str": "lora", "config_dict": {"method": "lora"}, "config_int": 5,
               "config_class": pl.LoRA}
    if variant in configs:
        return attempt(model, lambda: pl.attach(model, configs[variant]))
    names = {"name_empty": "", "name_digit": "1abc", "name_dot": "a.b", "name_int": 5, "name_space": "x y",
             "name_taken": "a"}
    pl.attach(model, pl.IA3(), name="a")
    return attempt(model, lambda: pl.attach(model, pl.config_from_dict(case["config"]), name=names[variant]))


def compose(case: dict, tmp: Path) -> dict:
    arch, variant = case["arch"], case["variant"]
    model = tiny_model(arch)
    for name in ("a", "b"):
        pl.attach(model, pl.Houlsby(reduction_factor=4), name=name)
    pl.attach(model, pl.LoRA(r=2), name="c")
    trained_looking(model)
    calls = {
        "stack_ok": lambda: pl.activate(model, pl.Stack("a", "b")),
        "fuse_ok": lambda: pl.activate(pl.attach(model, pl.Fuse("a", "b")), pl.Fuse("a", "b")),
        "wsum_ok": lambda: pl.activate(pl.attach(model, pl.WeightedSum("a", "b")), pl.WeightedSum("a", "b")),
        "average_ok": lambda: pl.attach(model, pl.Average("a", "b", weights=[0.25, 0.75])),
        "batchsplit_ok": lambda: pl.activate(model, pl.BatchSplit("a", "b", sizes=[1, 1])),
        "parallel_ok": lambda: pl.activate(model, pl.ParallelBlock("a", "b")),
        "stack_unknown": lambda: pl.activate(model, pl.Stack("a", "zzz")),
        "fuse_dup": lambda: pl.attach(model, pl.Fuse("a", "a")),
        "wsum_bad_mode": lambda: pl.attach(model, pl.WeightedSum("a", "b", mode="sideways")),
        "average_bad_weights": lambda: pl.attach(model, pl.Average("a", "b", weights=[1.0])),
        "average_nan_weights": lambda: pl.attach(model, pl.Average("a", "b", weights=[float("nan"), 1.0])),
        "average_mixed": lambda: pl.attach(model, pl.Average("a", "c")),
        "batchsplit_negative": lambda: pl.activate(model, pl.BatchSplit("a", "b", sizes=[-1, 3])),
        "batchsplit_wrong_rows": lambda: (pl.activate(model, pl.BatchSplit("a", "b", sizes=[1, 5])),
                                          outputs(model, arch)),
        "activate_nonstring": lambda: pl.activate(model, 5),
        "activate_unknown": lambda: pl.activate(model, "zzz"),
        "nested_bad": lambda: pl.activate(model, pl.Fuse(pl.Stack("a", "b"), "c")),
    }
    if variant == "batchsplit_wrong_rows":     # the setup is fine; the batch of 2 rows does not fit it
        pl.activate(model, pl.BatchSplit("a", "b", sizes=[1, 5]))
        return attempt(model, lambda: outputs(model, arch))
    result = attempt(model, calls[variant])
    if result["verdict"] == "ok" and case["expect"] == "valid":
        out = outputs(model, arch)
        rows = tiny_batch(arch)["input_ids"].shape[0] * (2 if variant == "parallel_ok" else 1)
        if not bool(torch.isfinite(out).all()) or out.shape[0] != rows:
            return {"verdict": "garbage", "message": f"{variant}: outputs of shape {list(out.shape)}, finite: "
                                                     f"{bool(torch.isfinite(out).all())}"}
    return result


CALLS = {"attach": attach_config, "attach_bad": attach_bad, "save_load": save_load, "merge": merge_ops,
         "detach": detach_ops, "compose": compose}


def _call(case: dict, tmp: str) -> dict:
    torch.manual_seed(0)
    return CALLS[case["op"]](case, Path(tmp))


def run_case(number: int, case: dict, shared: dict, timeout: float) -> dict:
    tmp = Path(shared["work"]) / "api" / f"call-{number:04d}"
    tmp.mkdir(parents=True)
    result = isolated(_call, case, str(tmp), timeout=timeout)
    failed = api_verdict(result)
    if failed is not None:
        verdict = failed
    else:
        value = result["value"]
        if value["verdict"] in ("garbage", "lost"):
            verdict = ({"garbage": "silent_garbage", "lost": "lost_data"}[value["verdict"]], value["message"])
        else:
            verdict = settle(case["expect"], value["verdict"], value["message"], value.get("changed"))
    out = record("API calls", number, case, verdict, result["seconds"], outcome_of(result))
    if verdict[0] in ("ok", "refused"):
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return out
