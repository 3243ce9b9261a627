"""AdapterHub composition fixtures (tests/fixtures/adapterhub_compose/) and their export check, in three steps:

    benchmarks/.venv-adapters/bin/python scripts/adapterhub_compose_fixtures.py write        # AdapterHub's side
    .venv/bin/python scripts/adapterhub_compose_fixtures.py export DIR                        # peftlab's exports
    benchmarks/.venv-adapters/bin/python scripts/adapterhub_compose_fixtures.py check DIR    # AdapterHub loads them

`write` takes the tiny BERT, RoBERTa, GPT-2, T5, BART and Llama bases that scripts/adapterhub_fixtures.py
stored (tests/fixtures/adapterhub/base), adds two or three adapters of one family (SeqBn bottlenecks, LoRA,
(IA)³) with random non-zero weights (seeded), saves them with AdapterHub's `save_adapter`, and for each case
activates one composition — Stack, Fuse (three fusion configs, saved with `save_adapter_fusion`), Parallel,
BatchSplit, Split, Average — or builds one `average_adapter`, then records AdapterHub's logits and the
gradients of one loss (dropout off: eval mode) with respect to every adapter and fusion tensor. A case
AdapterHub refuses is recorded with its error. `manifest.json` lists the cases: AdapterHub's composition
(its `to_dict()` form), the adapters it loads and what the test compares. `tests/test_adapterhub_compose.py`
rebuilds each case in peftlab on transformers 5 with no AdapterHub installed.

`export` (peftlab's venv) rebuilds every case in peftlab and writes its adapters, fusion or averaged adapter back
with `pl.export_adapterhub`, with peftlab's logits; `check` loads those with AdapterHub's `load_adapter` /
`load_adapter_fusion`, activates the same composition and compares. `make test-peers` runs all three.

AdapterHub pins transformers 4.57 and peftlab needs 5.x, so neither library is imported at the top.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "adapterhub_compose"
BASES = ROOT / "tests" / "fixtures" / "adapterhub" / "base"
sys.path.insert(0, str(ROOT / "tests"))
import tiny  # noqa: E402  (tests/tiny.py: the same tiny configs on transformers 4.57 and 5)

ARCHS = ("bert", "roberta", "gpt2", "t5", "bart", "llama")
ROWS, LENGTH = 3, 4          # three rows for a three-way BatchSplit; decoders as long as encoders for Split
FAMILIES = {"bn": ("a1", "a2", "a3"), "lora": ("l1", "l2", "l3"), "ia3": ("i1", "i2")}
MAP_SENTINEL = "::"           # expected-file keys: "grad::<AdapterHub tensor name>", "avg::<...>"


def node(kind: str, *children, **kwargs) -> dict:
    """An AdapterHub composition in its own `to_dict()` form (composition.py:52-62)."""
    out = {"type": kind, "children": [c if isinstance(c, dict) else {"type": "single", "children": [c]}
                                      for c in children]}
    if kwargs:
        out["kwargs"] = kwargs
    return out


STATIC = {"key": True, "query": True, "value": False, "query_before_ln": False, "regularization": False,
          "residual_before": False, "temperature": False, "value_before_softmax": True, "value_initialized": False,
          "dropout_prob": None}
OPTIONS = {"key": True, "query": True, "value": True, "query_before_ln": True, "regularization": False,
           "residual_before": True, "temperature": False, "value_before_softmax": False, "value_initialized": False,
           "dropout_prob": 0.3}


def cases() -> dict:
    """case -> (family, spec). `setup`: the composition activated; `fusion`: a fusion added first (its config
    and file format); `average`: AdapterHub's average_adapter arguments (the new adapter "avg" is activated);
    `grads`: "fusion" to record the fusion's gradients only (what AdapterHub's train_adapter_fusion trains)."""
    a, l, i = FAMILIES["bn"], FAMILIES["lora"], FAMILIES["ia3"]
    return {
        "bn_stack": ("bn", {"setup": node("Stack", *a)}),
        "bn_parallel": ("bn", {"setup": node("Parallel", a[0], a[1])}),
        "bn_batchsplit": ("bn", {"setup": node("BatchSplit", *a, batch_sizes=[1, 1, 1])}),
        "bn_split": ("bn", {"setup": node("Split", *a, splits=[1, 2, 1])}),
        "bn_average": ("bn", {"setup": node("Average", *a, weights=[1.0, 2.0, 3.0])}),
        "bn_fuse": ("bn", {"setup": node("Fuse", *a), "fusion": {"config": "dynamic", "safetensors": False}}),
        "bn_fuse_options": ("bn", {"setup": node("Fuse", a[0], a[1]), "grads": "fusion",
                                   "fusion": {"config": OPTIONS, "safetensors": True}}),
        "bn_fuse_static": ("bn", {"setup": node("Fuse", a[1], a[2]), "grads": "fusion",
                                  "fusion": {"config": STATIC, "safetensors": False}}),
        "bn_average_adapter": ("bn", {"average": {"adapter_list": [a[0], a[1]], "weights": [1.0, 3.0]}}),
        "lora_stack": ("lora", {"setup": node("Stack", l[0], l[1])}),
        "lora_parallel": ("lora", {"setup": node("Parallel", l[0], l[1])}),
        "lora_batchsplit": ("lora", {"setup": node("BatchSplit", *l, batch_sizes=[1, 1, 1])}),
        "lora_split": ("lora", {"setup": node("Split", l[0], l[1], splits=[2, 2])}),
        "lora_average": ("lora", {"setup": node("Average", *l, weights=[1.0, 2.0, 3.0])}),
        "lora_fuse": ("lora", {"setup": node("Fuse", l[0], l[1]), "fusion": {"config": "dynamic",
                                                                           "safetensors": True}}),
        "lora_average_adapter": ("lora", {"average": {"adapter_list": [l[0], l[1]], "weights": [1.0, 3.0]}}),
        "lora_average_negate_b": ("lora", {"average": {"adapter_list": [l[0], l[1]], "weights": [1.0, -0.5],
                                                       "combine_strategy": "lora_linear_only_negate_b",
                                                       "normalize_weights": False}}),
        "lora_average_svd": ("lora", {"average": {"adapter_list": [l[0], l[1]], "weights": [1.0, 3.0],
                                                  "combine_strategy": "lora_delta_w_svd", "svd_rank": 3}}),
        "ia3_stack": ("ia3", {"setup": node("Stack", *i)}),
        "ia3_parallel": ("ia3", {"setup": node("Parallel", *i)}),
        "ia3_batchsplit": ("ia3", {"setup": node("BatchSplit", *i, batch_sizes=[1, 2])}),
        "ia3_split": ("ia3", {"setup": node("Split", *i, splits=[1, 3])}),
        "ia3_average": ("ia3", {"setup": node("Average", *i, weights=[1.0, 3.0])}),
        "ia3_average_adapter": ("ia3", {"average": {"adapter_list": list(i), "weights": [1.0, 3.0]}}),
    }


def members_of(spec: dict) -> list[str]:
    """The adapters a case loads, in first-use order."""
    if "average" in spec:
        return list(spec["average"]["adapter_list"])
    out = []

    def walk(item):
        if item["type"] == "single":
            out.extend(n for n in item["children"] if n not in out)
        else:
            for child in item["children"]:
                walk(child)

    walk(spec["setup"])
    return out


def fixed_batch(arch: str) -> dict:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, tiny.VOCAB, (ROWS, LENGTH), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -1] = 0          # one padded position
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch in tiny.ENCODER_DECODER:
        batch["decoder_input_ids"] = torch.randint(3, tiny.VOCAB, (ROWS, LENGTH), generator=g)
    return batch


def loss_of(logits: torch.Tensor) -> torch.Tensor:
    """The one loss whose gradients are compared: the logits against a fixed probe sin(0.7 k), so that its
    gradient with respect to every logit is of order 1 whatever the logits' scale."""
    probe = torch.sin(0.7 * torch.arange(logits.numel(), dtype=torch.float32)).reshape(logits.shape)
    return (logits.float() * probe).sum()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- AdapterHub's side -----------------------------------------------------------------------------------

def family_config(family: str):
    import adapters   # optional: only AdapterHub's venv has it
    if family == "bn":
        return adapters.SeqBnConfig(reduction_factor=4)
    if family == "lora":
        return adapters.LoRAConfig(r=2, alpha=4)
    return adapters.IA3Config()


def ah_model(arch: str):
    """tests/tiny.py's model on transformers 4.57 with the stored base weights, ready for AdapterHub."""
    import adapters   # optional: only AdapterHub's venv has it
    model = tiny.tiny_model(arch)
    model.load_state_dict(load_file(str(BASES / f"{arch}.safetensors")), strict=False)
    adapters.init(model)
    return model.eval()


@torch.no_grad()
def randomize(model, marker: str, seed: int) -> None:
    """Every tensor whose name holds `marker` moves off its initialization by N(0, 0.3²) noise."""
    g = torch.Generator().manual_seed(seed)
    for key, param in model.named_parameters():
        if marker in key:
            param.add_(0.3 * torch.randn(param.shape, generator=g, dtype=param.dtype))


def write_members(arch: str, out: Path) -> None:
    """Every family's adapters on this architecture, saved once with AdapterHub's save_adapter."""
    for f, (family, names) in enumerate(FAMILIES.items()):
        model = ah_model(arch)
        for j, name in enumerate(names):
            model.add_adapter(name, config=family_config(family))
            randomize(model, f".{name}.", 100 * ARCHS.index(arch) + 10 * f + j)
            model.save_adapter(str(out / name), name, with_head=False, use_safetensors=True)


def ah_setup(setup: dict):
    from adapters.composition import AdapterCompositionBlock   # optional: only AdapterHub's venv has it
    return AdapterCompositionBlock.from_dict(setup)


def run_case(arch: str, out: Path, case: str, spec: dict, seed: int) -> tuple[dict, str | None]:
    """AdapterHub's logits and gradients for one case (raises where AdapterHub refuses it), and why there are no
    gradients when its backward fails."""
    model = ah_model(arch)
    for name in members_of(spec):
        model.load_adapter(str(out / name), use_safetensors=True)
    tensors = {}
    if "fusion" in spec:
        names = members_of(spec)
        model.add_adapter_fusion(names, config=spec["fusion"]["config"])
        randomize(model, f"adapter_fusion_layer.{','.join(names)}.", 7000 + seed)
        model.save_adapter_fusion(str(out / case), names, use_safetensors=spec["fusion"]["safetensors"])
    if "average" in spec:
        model.average_adapter("avg", **spec["average"])
        tensors.update({f"avg{MAP_SENTINEL}{k}": v.detach().clone() for k, v in model.named_parameters()
                        if ".avg." in k})
        model.set_active_adapters("avg")
    else:
        model.set_active_adapters(ah_setup(spec["setup"]))
    owned = [(k, p) for k, p in model.named_parameters() if "adapter_fusion_layer" in k or (
        spec.get("grads") != "fusion" and (".adapters." in k or ".loras." in k))]   # "fusion": as it trains
    for _, param in owned:
        param.requires_grad_(True)
    logits = model(**fixed_batch(arch)).logits
    tensors["logits"] = logits.detach().clone()
    try:
        loss_of(logits).backward()
    except RuntimeError as err:   # AdapterHub's own backward fails (Parallel's in-place mask copies): logits only
        return tensors, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
    if "average" not in spec:
        tensors.update({f"grad{MAP_SENTINEL}{k}": p.grad.detach().clone() for k, p in owned if p.grad is not None})
    if "fusion" in spec:
        reg = model.base_model.get_fusion_regularization_loss()
        if reg is not None:
            tensors["fusion_regularization_loss"] = reg.detach().reshape(1).clone()
    return tensors, None


def write(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = {"bases": {}, "cases": {}, "refused": {}}
    for arch in ARCHS:
        torch.manual_seed(0)
        folder = out / arch
        folder.mkdir()
        manifest["bases"][arch] = sha256(BASES / f"{arch}.safetensors")
        save_file(fixed_batch(arch), str(folder / "batch.safetensors"))
        write_members(arch, folder)
        manifest["cases"][arch], manifest["refused"][arch] = {}, {}
        for seed, (case, (family, spec)) in enumerate(cases().items()):
            try:
                tensors, no_grads = run_case(arch, folder, case, spec, 100 * ARCHS.index(arch) + seed)
            except Exception as err:   # AdapterHub refuses the pair: recorded with its own words
                shutil.rmtree(folder / case, ignore_errors=True)
                message = (str(err).splitlines() or [""])[0][:200]
                manifest["refused"][arch][case] = f"{type(err).__name__}: {message}".rstrip(": ")
                print(f"refused {arch}-{case}: {manifest['refused'][arch][case]}")
                continue
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{case}.safetensors"))
            manifest["cases"][arch][case] = {"family": family, "members": members_of(spec), **spec,
                                             **({"no_grads": no_grads} if no_grads else {})}
            print(f"wrote {arch}-{case}")
        used = {m for spec in manifest["cases"][arch].values() for m in spec["members"]}
        for name in (n for names in FAMILIES.values() for n in names if n not in used):
            shutil.rmtree(folder / name)
    text = json.dumps(manifest, indent=1, sort_keys=True, separators=(",", ":"))
    (out / "manifest.json").write_text(text + "\n")


# --- peftlab's side: rebuild every case, export it; AdapterHub's side: load the exports --------------------

def peftlab_case(arch: str, folder: Path, case: str, spec: dict):
    """(peftlab's venv) The tf5 model with the case's adapters loaded from the fixture and its setup active."""
    import peftlab as pl   # optional: only peftlab's venv has it
    model = tiny.tiny_model(arch)
    model.load_state_dict(load_file(str(BASES / f"{arch}.safetensors")), strict=False)
    if arch == "t5":   # the attention transformers 4.57 runs T5 with (transformers 5: SDPA, ~1e-6 apart)
        model.set_attn_implementation("eager")
    for name in spec["members"]:
        pl.load(model, folder / name, activate=False)
    if "fusion" in spec:
        pl.load(model, folder / case)
    if "average" in spec:
        pl.adapterhub.average_adapter(model, "avg", set_active=True, **spec["average"])
    else:
        pl.activate(model, pl.adapterhub.block_from_setup(spec["setup"], model))
    return model


def export(exports: Path) -> None:
    import peftlab as pl   # optional: only peftlab's venv has it
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    for arch, arch_cases in manifest["cases"].items():
        batch = load_file(str(FIXTURES / arch / "batch.safetensors"))
        for case, spec in arch_cases.items():
            model = peftlab_case(arch, FIXTURES / arch, case, spec)
            target = exports / arch / case
            names = ["avg"] if "average" in spec else [*spec["members"], *(
                [n for n in pl.adapters(model) if n not in spec["members"]] if "fusion" in spec else [])]
            for name in names:
                pl.export_adapterhub(model, name, target / name)
            with torch.no_grad():
                save_file({"logits": model(**batch).logits}, str(target / "peftlab.safetensors"))
            print(f"exported {arch}-{case}")


def check(exports: Path) -> int:
    """(AdapterHub's venv) AdapterHub loads each export, activates the case's setup, and gets peftlab's logits."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    failures = 0
    for arch, arch_cases in manifest["cases"].items():
        for case, spec in arch_cases.items():
            target = exports / arch / case
            model = ah_model(arch)
            for sub in sorted(p for p in target.iterdir() if (p / "adapter_config.json").is_file()):
                model.load_adapter(str(sub))
            for sub in sorted(p for p in target.iterdir() if (p / "adapter_fusion_config.json").is_file()):
                model.load_adapter_fusion(str(sub))
            model.set_active_adapters("avg" if "average" in spec else ah_setup(spec["setup"]))
            with torch.no_grad():
                gap = (model(**fixed_batch(arch)).logits - load_file(str(target / "peftlab.safetensors"))["logits"])
            gap = gap.abs().max().item()
            failures += gap > 1e-5
            print(f"{'ok  ' if gap <= 1e-5 else 'FAIL'} {arch}-{case}: max |logit gap| {gap:.2e}")
    return failures


def main(argv=None) -> int:
    from adapterhub_fixtures import run_steps     # scripts/: the same write / export / check command line
    return run_steps(argv, __doc__, write, export, check, FIXTURES)


if __name__ == "__main__":
    sys.exit(main())
