"""The shape of the code, checked so it stays that way (issue 17, ../shared/LAYOUT.md).

* Layers: ``runtime`` < ``genome`` < ``model`` < ``tasks``; a module imports (at module level)
  only from its own layer or the ones below it, plus ``config`` and ``errors``. Imports inside a
  function may reach up only where listed in ``UPWARD_CALLS`` (each one a convenience entry point).
* Sizes: no module of ``reformer_seq`` or ``pipelines`` over ``MAX_MODULE_LINES`` lines, no function
  over ``MAX_FUNCTION_LINES`` (the C kernel is exempt: it is not Python).
* One helper per job: the device resolver, the autocast helper, the atomic writers and the
  compile-and-load helper are each defined once, and only ``runtime/files.py`` renames files into
  place.
* ``reformer_seq`` never imports click (the CLI is ``pipelines/``).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "reformer_seq"
LAYERS = {"runtime": 0, "genome": 1, "model": 2, "tasks": 3}
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 80
# (module, imported module): function-level imports that go up a layer on purpose
UPWARD_CALLS = {("model/lm.py", "tasks.pretrained")}  # ReformerLM.from_pretrained, a convenience
ONE_DEFINITION = ["resolve_device", "autocast", "atomic_path", "atomic_write", "atomic_write_text",
                  "atomic_write_json", "atomic_folder", "compile_library", "find_compiler", "current_policy"]


def _modules(*folders: Path):
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _imports(path: Path, tree: ast.AST):
    """(line, absolute dotted target under reformer_seq, inside a function) of relative imports."""
    pkg = list(path.relative_to(PKG).parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[:len(pkg) - (node.level - 1)]
            yield node.lineno, ".".join(base + ([node.module] if node.module else [])), node.col_offset > 0


def test_layers_import_downwards_only():
    wrong = []
    for path, tree in _modules(PKG):
        rel = path.relative_to(PKG).as_posix()
        layer = LAYERS.get(path.relative_to(PKG).parts[0]) if len(path.relative_to(PKG).parts) > 1 else None
        for line, target, lazy in _imports(path, tree):
            top = target.split(".")[0]
            if layer is None or top not in LAYERS or LAYERS[top] <= layer:
                continue
            if lazy and (rel, target) in UPWARD_CALLS:
                continue
            wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_modules_and_functions_fit_on_a_screen():
    big, long = [], []
    for path, tree in _modules(PKG, ROOT / "pipelines"):
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            big.append(f"{path.relative_to(ROOT)}: {n} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not big and not long, "\n".join(big + long)


def test_one_helper_per_job():
    defined: dict[str, list[str]] = {name: [] for name in ONE_DEFINITION}
    renames = []
    for path, tree in _modules(PKG):
        rel = path.relative_to(PKG).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in defined:
                defined[node.name].append(rel)
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                    and node.attr in ("replace", "rename") and rel != "runtime/files.py"):
                renames.append(f"{rel}:{node.lineno} os.{node.attr}")
    assert all(len(places) == 1 for places in defined.values()), defined
    assert not renames, "atomic writes go through runtime/files.py:\n" + "\n".join(renames)


@pytest.mark.parametrize("folder", ["reformer_seq"])
def test_the_library_never_imports_click(folder):
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")
            if re.search(r"^\s*(import click|from click)", p.read_text(), re.M)]
    assert not hits, hits


def test_every_package_ships_in_the_wheel():
    """pyproject.toml lists the packages by hand (configs/ and data/ are mapped into the package);
    a new subpackage missing there would install without its modules."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
