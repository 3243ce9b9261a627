"""The package is layered (docs/extending.md): no import circle among its modules, no private name
imported from another module, no import inside a function unless it is optional or costly at import
time (said in a comment on that line); and nothing outside a model keeps it alive."""
from __future__ import annotations

import ast
import gc
import weakref
from pathlib import Path

import torch

import peftlab as pl
from tiny import tiny_batch, tiny_model

SRC = Path(pl.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """(importer, imported module, imported name or None, line, inside a function) for every import."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    out = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = name.split(".") if package else name.split(".")[:-1]
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for alias in node.names:
                    full = f"{origin}.{alias.name}"
                    target = full if full in modules else origin
                    out.append((name, target, None if full in modules else alias.name, node.lineno,
                                id(node) in inner, path))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    out.append((name, alias.name, None, node.lineno, id(node) in inner, path))
    return modules, out


def test_no_import_circle_and_no_private_name_across_modules():
    modules, imports = _imports()
    graph = {m: set() for m in modules}
    private = []
    for importer, target, imported, line, _, _ in imports:
        while target and target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in modules and target != importer:
            graph[importer].add(target)
            if imported is not None and imported.startswith("_"):
                private.append(f"{importer}:{line} imports {imported} from {target}")
    assert not private, private

    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_inside_functions_are_optional_or_costly_and_say_so():
    _, imports = _imports()
    unexplained = []
    for importer, _, _, line, inner, path in imports:
        if inner:
            text = path.read_text().splitlines()[line - 1]
            if "optional" not in text and "import-time cost" not in text:
                unexplained.append(f"{importer}:{line}: {text.strip()}")
    assert not unexplained, unexplained


def test_the_layering_check_finds_a_circle_and_a_private_import(tmp_path, monkeypatch):
    """The checks above can fail: a copy of two modules importing each other is caught."""
    (tmp_path / "peftlab").mkdir()
    (tmp_path / "peftlab" / "__init__.py").write_text("")
    (tmp_path / "peftlab" / "a.py").write_text("from .b import _hidden\n")
    (tmp_path / "peftlab" / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "peftlab")
    import pytest
    with pytest.raises(AssertionError, match="imports _hidden"):
        test_no_import_circle_and_no_private_name_across_modules()
    with pytest.raises(AssertionError, match="b:2"):
        test_imports_inside_functions_are_optional_or_costly_and_say_so()
    (tmp_path / "peftlab" / "a.py").write_text("from .b import f\n")
    (tmp_path / "peftlab" / "b.py").write_text("from .a import g\n")
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle_and_no_private_name_across_modules()


def test_a_model_dropped_with_adapters_attached_is_freed():
    for arch in ("gpt2", "t5"):
        model = tiny_model(arch)
        pl.attach(model, pl.PromptTuning(length=3), "p")
        pl.attach(model, pl.PrefixTuning(prefix_length=2, mlp_hidden=4), "x")
        pl.attach(model, pl.LoRA(r=2), "a")
        pl.attach(model, pl.LoRA(r=2), "b")
        pl.attach(model, pl.IntrinsicSAID(intrinsic_dim=300), "s")
        pl.activate(model, "a", "p", "x")
        batch = tiny_batch(arch)
        with torch.no_grad():
            model(**batch, adapter_names=["a", "b"])
            model.generate(input_ids=batch["input_ids"], max_new_tokens=2, adapter_names=["a", "b"])
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None, f"{arch}: something outside the model keeps it alive"
