"""Import layering: modules import one way, none imports a module that imports it back;
only the sweep driver imports Ray; the README's layout names every module.

The graph is read from the source (every import statement, those inside functions too), so
the check costs no imports and also sees the lazy imports the CLI uses to stay fast.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = "harness"  # every module of the harness, its methods package included


def module_files() -> dict[str, Path]:
    files = {}
    for folder, package in (("harness", "harness"), ("methods", "harness.methods")):
        for path in (REPO / folder).rglob("*.py"):
            parts = (package, *path.relative_to(REPO / folder).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. `from pkg import name` counts as importing
    pkg.name when that is a module, else pkg."""
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    target = target if target in files else node.module
                    if target in files:
                        graph[name].add(target)
    return graph


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name == goal:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return False


def test_no_import_circle():
    graph = import_graph()
    circles = [
        (name, dep)
        for name in graph
        if name.startswith(CHECKED)
        for dep in graph[name]
        if reaches(graph, dep, name)
    ]
    assert not circles, f"each imports a module that leads back to it: {circles}"


@pytest.mark.parametrize("package", ["harness.datasets", "harness.methods"])
def test_submodules_never_import_their_package(package):
    """A submodule names its siblings (harness.datasets.registry), never the package, whose
    __init__ imports every submodule and so would import it back."""
    graph = import_graph()
    offenders = [
        name for name in graph if name.startswith(f"{package}.") and package in graph[name]
    ]
    assert not offenders, offenders


def test_every_package_is_installed_by_pyproject():
    """A regular `pip install .` copies only the packages pyproject lists: a new subpackage
    folder missing there would install a broken harness (editable installs hide it)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(("harness", *p.parent.relative_to(REPO / "harness").parts)).rstrip(".")
        for p in (REPO / "harness").rglob("__init__.py")
    }
    folders |= {
        "harness.methods." + ".".join(p.parent.relative_to(REPO / "methods").parts)
        for p in (REPO / "methods").rglob("__init__.py")
        if p.parent != REPO / "methods"
    }
    folders.add("harness.methods")
    assert folders <= listed, sorted(folders - listed)


RAY_IMPORTERS = {
    "harness.sweep.driver",
    "harness.sweep.experiment",
    "harness.sweep.callback",
    "harness.sweep.ray_node",
}  # the sweep driver and its Ray


def test_only_the_sweep_driver_imports_ray():
    """Ray is the driver's business: every other module (a trial, the shared-data arrays,
    tracking, the CLI, a method) runs and imports without it. Imports inside functions count."""
    importers = set()
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            if any(m == "ray" or m.startswith("ray.") for m in modules):
                importers.add(name)
    assert importers == RAY_IMPORTERS, sorted(importers ^ RAY_IMPORTERS)


def readme_layout() -> set[str]:
    """The module paths README's "Layout" tree names (`harness/spec/plan.py`, ...): a folder
    line (`spec/`) opens a folder for the lines indented below it, and names its
    `__init__.py`."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Layout") : text.index("## Development")]
    named, folders = set(), []
    for line in block.splitlines():
        found = re.match(r"^    ( *)([\w./, ]+?)(?:  |$)", line)
        if not found or not re.match(r"^[\w]", found.group(2)):
            continue
        depth = len(found.group(1)) // 2
        folders = folders[:depth]
        for entry in (e.strip() for e in found.group(2).split(",")):
            if entry.endswith("/"):
                folders = folders[:depth] + [entry.rstrip("/")]
                named.add("/".join([*folders, "__init__.py"]))  # a package: its folder line
            elif entry.endswith(".py"):
                named.add("/".join([*folders, entry]))
    return named


def test_the_readme_layout_names_every_module_where_it_is():
    """README's "Layout" lists every module of harness/, in its package, with its job: a new
    or moved module is named there too, and nothing it names is missing."""
    named = {p for p in readme_layout() if p.startswith("harness/")}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "harness").rglob("*.py")}
    assert modules - named == set(), "modules the layout does not name"
    assert named - modules == set(), "modules the layout names that do not exist"


def test_reading_a_spec_imports_no_runtime():
    """The spec's schema and YAML loading import neither PyTorch nor the protocol: a spec is
    read and its structure checked before any of the runtime is loaded (values that name an
    architecture's settings or an augmentation import the protocol to check them)."""
    import subprocess
    import sys

    code = (
        "import sys, harness.spec.schema as s\n"
        "s.build_sweep_spec({'name': 'x', 'dataset': {'name': 'digits'}, 'methods': {'erm': {}}})\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('harness.protocol')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert out.strip() == "[]", out


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_sixty_lines():
    """Short functions (nanoGPT's style): every function of harness/ and methods/, docstring
    and signature included, fits in 60 lines."""
    long = []
    for folder in ("harness", "methods"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long, long


def test_lab_notes_live_in_docs_and_every_pointer_to_them_holds():
    """Docstrings say what and why; measurement tables and their history are in docs/notes/
    (issue 24). A docstring of over 50 lines in methods/ is a lab notebook creeping back, and
    every `docs/....md` a module names must exist."""
    import re

    long, dangling = [], []
    for folder in ("harness", "methods"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            tree = ast.parse(text)
            for node in [tree, *ast.walk(tree)]:
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                    continue
                doc = ast.get_docstring(node, clean=False) or ""
                if folder == "methods" and doc.count("\n") > 50:
                    long.append(f"{path.relative_to(REPO)} {getattr(node, 'name', '')}")
            for named in re.findall(r"docs/[\w/.-]+\.md", text):
                if not (REPO / named).is_file():
                    dangling.append(f"{path.relative_to(REPO)} -> {named}")
    assert not long, long
    assert not dangling, dangling
