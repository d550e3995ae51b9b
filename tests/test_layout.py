"""The shape of the code, checked so it stays that way (issue 17, ../shared/LAYOUT.md).

* Layers: ``runtime`` < ``genome`` < ``model`` < ``tasks``; a module imports only from its own
  layer or the ones below it, plus ``config`` and ``errors``, at module level and inside functions
  alike. The package itself (``from .. import x``, ``import reformer_seq``) is the top: its
  ``__init__`` imports every layer, so no module inside a layer may import it.
* No import circles, inside a layer too: the graph of imports between modules (lazy imports
  inside functions included) has no cycle.
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
ONE_DEFINITION = ["resolve_device", "autocast", "atomic_path", "atomic_write", "atomic_write_text",
                  "atomic_write_json", "atomic_folder", "compile_library", "find_compiler", "current_policy"]


def _modules(*folders: Path):
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _imports(path: Path, tree: ast.AST):
    """(line, absolute dotted target under reformer_seq, imported names) of every import of the
    package, relative or absolute, at module level or inside a function. The package root is ''."""
    pkg = list(path.relative_to(PKG).parts[:-1])
    if path.name == "__init__.py":
        pkg = pkg  # a package's own __init__: `.` is the package itself
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[:len(pkg) - (node.level - 1)]
            yield node.lineno, ".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "reformer_seq":
            yield node.lineno, node.module.partition(".")[2], [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "reformer_seq":
                    yield node.lineno, alias.name.partition(".")[2], []


def _module_of(dotted: str) -> str | None:
    """The module file (relative posix path) that a dotted name under reformer_seq refers to."""
    base = PKG.joinpath(*dotted.split(".")) if dotted else PKG
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py").relative_to(PKG).as_posix()
    if (base / "__init__.py").is_file():
        return (base / "__init__.py").relative_to(PKG).as_posix()
    return None


def _graph() -> dict[str, set[str]]:
    """module -> the modules it imports (a ``from pkg import name`` of a submodule is an edge to it)."""
    edges: dict[str, set[str]] = {}
    for path, tree in _modules(PKG):
        rel = path.relative_to(PKG).as_posix()
        out = edges.setdefault(rel, set())
        for _, target, names in _imports(path, tree):
            subs = [m for m in (_module_of(f"{target}.{n}" if target else n) for n in names) if m]
            out.update(subs or [m for m in (_module_of(target),) if m])
            if len(subs) < len(names) and _module_of(target):
                out.add(_module_of(target))
        out.discard(rel)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(rel: str) -> int | None:
    parts = rel.split("/")
    return LAYERS.get(parts[0]) if len(parts) > 1 else None


def test_layers_import_downwards_only():
    wrong = []
    for path, tree in _modules(PKG):
        rel = path.relative_to(PKG).as_posix()
        layer = _layer(rel)
        if layer is None:
            continue
        for line, target, _ in _imports(path, tree):
            top = target.split(".")[0]
            if target == "":
                wrong.append(f"{rel}:{line} imports the package root (reformer_seq/__init__.py imports every layer)")
            elif top in LAYERS and LAYERS[top] > layer:
                wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_circle_finder_finds_circles():
    """The checker itself: a planted two-module circle and a three-module one are found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == [["x", "y", "z"]]
    assert _cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []
    assert "model/lm.py" in _graph()["tasks/pretrained.py"]  # the graph sees real imports


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


TEST_FOLDERS = {"model": PKG / "model", "genome": PKG / "genome", "tasks": PKG / "tasks",
                "runtime": PKG / "runtime", "cli": ROOT / "pipelines", "benchmarks": ROOT / "benchmarks"}


# package-wide checks, and the top-level modules (config.py), stay at the top of tests/
TOP_LEVEL_TESTS = {"test_layout.py", "test_lint.py", "test_docs_links.py", "test_install.py", "test_plots.py",
                   "test_config.py"}


def test_tests_mirror_the_packages():
    """tests/ has one folder per package (cli/ for pipelines/, benchmarks/ for the study scripts)
    beside the package-wide checks at the top; test file names are unique across the folders
    (pytest's default import mode names a test module by its file name); no test file imports
    another (what they share is in tests/helpers.py and tests/conftest.py)."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("fixtures", "__pycache__")}
    assert folders <= set(TEST_FOLDERS), sorted(folders - set(TEST_FOLDERS))
    assert all(TEST_FOLDERS[f].is_dir() for f in folders)
    top = sorted(p.name for p in tests.glob("test_*.py"))
    assert set(top) <= TOP_LEVEL_TESTS, f"put these in the folder of the package they test: {sorted(set(top) - TOP_LEVEL_TESTS)}"
    files = sorted(p for p in tests.rglob("test_*.py") if "fixtures" not in p.parts)
    names = [p.name for p in files]
    assert len(set(names)) == len(names), sorted({n for n in names if names.count(n) > 1})
    crossed = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            crossed += [f"{path.relative_to(ROOT)}: {m}" for m in mods if m.startswith("test_") or m == "conftest"]
    assert not crossed, crossed
