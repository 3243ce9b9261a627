"""The API attack's calls, each run inside a forked child: attach with a generated config, save / load,
merge / unmerge, detach and composition. Each returns {"verdict": ok | refused | garbage | lost, ...}:
`refused` is a one-line PeftlabError after which the model (parameters, buffers, modules, adapters,
active setup) is exactly as before the call; another exception escapes and is counted as a traceback."""
from __future__ import annotations

from pathlib import Path

import torch

import attack_common  # noqa: F401  (puts tests/ on the path, for the tiny models)
import peftlab as pl
from peftlab.core import adapter_state
from peftlab.state import controller_of
from tiny import tiny_batch, tiny_model

OTHER_ARCH = {"t5": "bert", "bert": "gpt2", "gpt2": "llama", "llama": "t5"}


def state(model) -> tuple:
    controller = controller_of(model)
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, [n for n, _ in model.named_modules()],
            list(pl.adapters(model)), repr(controller.active) if controller is not None else None)


def changed(before: tuple, model) -> str | None:
    tensors, modules, names, active = before
    now = model.state_dict()
    if list(now) != list(tensors):
        return "the model's parameter names changed"
    bad = next((k for k, v in tensors.items() if not torch.equal(now[k], v)), None)
    if bad is not None:
        return f"parameter '{bad}' changed"
    if [n for n, _ in model.named_modules()] != modules:
        return "the model's modules changed"
    if list(pl.adapters(model)) != names:
        return f"the attached adapters changed: {names} -> {list(pl.adapters(model))}"
    controller = controller_of(model)
    if (repr(controller.active) if controller is not None else None) != active:
        return "the active setup changed"
    return None


def attempt(model, call, files: Path | None = None) -> dict:
    """Run `call()`; a PeftlabError must be one line and leave `model` (and `files`) unchanged."""
    from attack_common import lost, snapshot
    before, on_disk = state(model), snapshot(files) if files else {}
    try:
        call()
    except pl.PeftlabError as err:
        message = str(err)
        if "\n" in message or not message.strip():
            raise
        differs = changed(before, model) or (lost(on_disk, snapshot(files)) if files else None)
        return {"verdict": "refused", "message": message[:400], "changed": differs}
    return {"verdict": "ok", "message": ""}


def trained_looking(model, seed: int = 1) -> None:
    """Give the adapters non-zero weights (many start as an identity), so that comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def outputs(model, arch: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tiny_batch(arch)).logits


def check_attached(model, arch: str, name: str, tmp: Path) -> dict:
    """An accepted adapter must give finite outputs and gradients and survive save / load bit for bit."""
    out = outputs(model, arch)
    if not bool(torch.isfinite(out).all()):
        return {"verdict": "garbage", "message": "accepted, but the outputs are not finite"}
    model.train()
    loss = model(**tiny_batch(arch)).loss
    if not bool(torch.isfinite(loss)):
        return {"verdict": "garbage", "message": f"accepted, but the training loss is {float(loss)}"}
    loss.backward()
    trained_looking(model)
    saved = pl.save(model, tmp / "saved", name=name)
    fresh = tiny_model(arch)
    try:
        pl.load(fresh, saved)
    except pl.PeftlabError as err:
        return {"verdict": "lost", "message": f"a saved adapter does not load: {str(err)[:300]}"}
    ours, theirs = adapter_state(model, name), adapter_state(fresh, name)
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        return {"verdict": "garbage", "message": "the loaded adapter's tensors differ from the saved ones"}
    if not torch.allclose(outputs(model, arch), outputs(fresh, arch), atol=1e-6):
        return {"verdict": "garbage", "message": "the loaded adapter gives other outputs"}
    return {"verdict": "ok", "message": ""}


# --- save and load ------------------------------------------------------------------------------------

def save_load(case: dict, tmp: Path) -> dict:
    arch, variant = case["arch"], case["variant"]
    model = pl.attach(tiny_model(arch), pl.config_from_dict(case["config"]), name="a")
    trained_looking(model)
    saved = pl.save(model, tmp / "saved", name="a")
    fresh = tiny_model(arch)
    loads = {"missing_dir": tmp / "nope", "file_path": saved / "peftlab_weights.safetensors",
             "empty_dir": tmp / "empty"}
    (tmp / "empty").mkdir()
    if variant == "same":
        result = attempt(fresh, lambda: pl.load(fresh, saved))
        if result["verdict"] == "ok" and not torch.allclose(outputs(fresh, arch), outputs(model, arch), atol=1e-6):
            return {"verdict": "garbage", "message": "the loaded adapter gives other outputs"}
        return result
    if variant in loads:
        return attempt(fresh, lambda: pl.load(fresh, loads[variant]), files=tmp)
    if variant in ("other_arch", "strict_false_other_arch"):
        other = tiny_model(OTHER_ARCH[arch])
        return attempt(other, lambda: pl.load(other, saved, strict=variant == "other_arch"), files=tmp)
    if variant == "dup_name":
        pl.attach(fresh, pl.IA3(), name="a")
        return attempt(fresh, lambda: pl.load(fresh, saved), files=tmp)
    if variant == "bad_name":
        return attempt(fresh, lambda: pl.load(fresh, saved, name="1 bad"), files=tmp)
    if variant == "load_twice":
        pl.load(fresh, saved)
        return attempt(fresh, lambda: pl.load(fresh, saved), files=tmp)
    if variant == "save_unknown_name":
        return attempt(model, lambda: pl.save(model, tmp / "other", name="zzz"), files=tmp)
    if variant == "save_into_file":
        (tmp / "a-file").write_text("the user's file")
        return attempt(model, lambda: pl.save(model, tmp / "a-file"), files=tmp)
    if variant == "save_no_adapters":
        return attempt(fresh, lambda: pl.save(fresh, tmp / "other"), files=tmp)
    # save_over_existing: a second adapter saved over the first replaces it whole
    second = pl.attach(tiny_model(arch), pl.config_from_dict(case["config"]), name="a")
    trained_looking(second, seed=2)
    result = attempt(second, lambda: pl.save(second, saved))
    pl.load(fresh, saved)
    if not torch.allclose(outputs(fresh, arch), outputs(second, arch), atol=1e-6):
        return {"verdict": "garbage", "message": "an adapter saved over another loads as something else"}
    return result


# --- merge, unmerge, detach ---------------------------------------------------------------------------

def merge_ops(case: dict, tmp: Path) -> dict:
    arch, variant = case["arch"], case["variant"]
    model = tiny_model(arch)
    pristine = state(model)
    model = pl.attach(model, pl.config_from_dict(case["config"]), name="a")
    trained_looking(model)
    if variant == "non_finite":
        with torch.no_grad():
            next(p for p in model.parameters() if p.requires_grad).fill_(float("inf"))
    if variant in ("unmergeable", "non_finite"):
        return attempt(model, lambda: pl.merge(model, "a"))
    if variant == "unknown_name":
        return attempt(model, lambda: pl.merge(model, "zzz"))
    before, weights = outputs(model, arch), state(model)
    if variant == "unmerge_unmerged":
        result = attempt(model, lambda: pl.unmerge(model, "a"))
        return result if result["verdict"] != "ok" or not changed(weights, model) else \
            {"verdict": "garbage", "message": "unmerging an unmerged adapter changed the model"}
    result = attempt(model, lambda: pl.merge(model, "a"))
    if result["verdict"] != "ok":
        return result
    if variant == "twice":
        pl.merge(model, "a")
    if not torch.allclose(outputs(model, arch), before, atol=1e-4):
        return {"verdict": "garbage", "message": "the merged model gives other outputs"}
    if variant == "merge_then_detach":
        pl.detach(model, "a")
        differs = changed(pristine, model)
        return {"verdict": "lost", "message": f"after merge and detach: {differs}"} if differs else result
    pl.unmerge(model, "a")
    differs = changed(weights, model)
    return {"verdict": "lost", "message": f"after merge and unmerge: {differs}"} if differs else result


def detach_ops(case: dict, tmp: Path) -> dict:
    arch, variant = case["arch"], case["variant"]
    model = tiny_model(arch)
    pristine = state(model)
    if variant == "none_attached":
        return attempt(model, lambda: pl.detach(model, "a"))
    pl.attach(model, pl.config_from_dict(case["config"]), name="a")
    pl.attach(model, pl.LoRA(r=2), name="b")
    if variant == "unknown":
        return attempt(model, lambda: pl.detach(model, "zzz"))
    pl.detach(model, "a")
    if variant == "twice":
        return attempt(model, lambda: pl.detach(model, "a"))
    pl.detach(model, "b")
    differs = changed(pristine, model)
    return {"verdict": "lost", "message": f"after detaching every adapter: {differs}"} if differs \
        else {"verdict": "ok", "message": ""}
