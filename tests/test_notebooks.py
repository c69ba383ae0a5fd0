"""Static checks of every notebook (no execution, fast): the course's shape and its import rule.

* the first markdown cell states learning objectives and a "run time" line;
* the last markdown cell is "Checks for understanding";
* code cells import only from ``helpers``, the standard library and the course's public libraries;
* no notebook defines (at the top level of a cell) a function or class that ``helpers`` provides:
  notebooks import the tested version, never paste it. Exempt: cells tagged ``exercise``, where the
  student writes a piece of the course (``helpers.exercises``);
* every notebook opens with the same hosted-service set-up cell, and that cell finds the course.
"""
from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
HELPERS = REPO / "helpers"
ALLOWED = {"helpers", "torch", "torchvision", "numpy", "matplotlib", "seaborn", "ipywidgets", "IPython",
           "tqdm", "pandas"} | set(sys.stdlib_module_names)


def _cells(path: Path, kind: str) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == kind]


def _parse(source: str) -> ast.Module:
    """A code cell as Python: IPython magics (``%…``, ``!…``) become blank lines."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines))


EXEMPT_TAG = "exercise"  # the student's own version of a helpers piece: redefining is the point


def _code(path: Path, skip_tag: str | None = None) -> list[tuple[int, ast.Module]]:
    return [(i, _parse(c.source)) for i, c in enumerate(_cells(path, "code"), start=1)
            if skip_tag is None or skip_tag not in c.metadata.get("tags", [])]


def _defined(tree: ast.Module) -> list[str]:
    """Functions and classes a module (or cell) defines at its top level, lambdas assigned to a name included."""
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return names


@functools.lru_cache(maxsize=1)
def _helpers_names() -> frozenset[str]:
    return frozenset(name for f in HELPERS.glob("*.py") for name in _defined(ast.parse(f.read_text()))
                     if not name.startswith("_"))


ids = [p.name for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_opens_with_objectives_and_run_time(path):
    first = _cells(path, "markdown")[0].source
    assert re.search(r"learning objectives", first, re.I), f"{path.name}: first markdown cell has no learning objectives"
    assert re.search(r"run[ -]?time", first, re.I), f"{path.name}: first markdown cell has no 'run time' line"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_ends_with_checks_for_understanding(path):
    last = _cells(path, "markdown")[-1].source
    # a heading, optionally numbered as the notebook's sections are ("## 8 · Checks for understanding")
    assert re.match(r"\s*#+\s*(\d+\s*[·.:)-]?\s*)?checks for understanding", last, re.I), \
        f"{path.name}: the last markdown cell is not 'Checks for understanding' but {last.splitlines()[0]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_imports_only_helpers_and_public_libraries(path):
    bad = []
    for i, tree in _code(path):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = ["." * node.level + (node.module or "")]
            else:
                continue
            bad += [f"code cell {i}: import {m}" for m in mods if m.split(".")[0] not in ALLOWED]
    assert not bad, f"{path.name} imports outside helpers and the course's libraries: " + "; ".join(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_does_not_redefine_helpers(path):
    provided = _helpers_names()
    again = [f"code cell {i}: {name}" for i, tree in _code(path, skip_tag=EXEMPT_TAG)
             for name in _defined(tree) if name in provided]
    assert not again, (f"{path.name} defines what helpers provides (import it instead): " + "; ".join(again))


def test_helpers_names_are_collected():
    names = _helpers_names()
    assert {"fit", "predict", "confusion_matrix", "show_grid", "build_model"} <= names
    assert not any(n.startswith("_") for n in names)


def test_checks_catch_a_bad_cell():
    tree = _parse("%matplotlib inline\nimport sklearn.metrics\nfrom ..x import y\n"
                  "def confusion_matrix(a, b):\n    pass\nshow_grid = lambda x: x\nclass Fine: pass\n")
    assert _defined(tree) == ["confusion_matrix", "show_grid", "Fine"]
    mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert mods == ["sklearn.metrics"] and "sklearn" not in ALLOWED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_kernel_is_the_one_lab_starts(path):
    # JupyterLab names ipykernel's spec "Python 3 (ipykernel)": any other name marks the notebook
    # as changed the moment it opens.
    spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
    assert (spec.get("name"), spec.get("display_name")) == ("python3", "Python 3 (ipykernel)")


def test_exercise_cells_and_only_they_are_exempt(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def confusion_matrix(a, b):\n    pass\n"),
                nbformat.v4.new_code_cell("def ece(p, y):\n    pass\n", metadata={"tags": [EXEMPT_TAG]})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert [n for _, tree in _code(path) for n in _defined(tree)] == ["confusion_matrix", "ece"]
    assert [n for _, tree in _code(path, skip_tag=EXEMPT_TAG) for n in _defined(tree)] == ["confusion_matrix"]


def _setup_cell(path: Path) -> str:
    return _cells(path, "code")[0].source


def test_every_notebook_opens_with_the_same_hosted_setup_cell():
    first = {path.name: _setup_cell(path) for path in NOTEBOOKS}
    assert "find_spec(\"helpers\")" in first[NOTEBOOKS[0].name]
    assert len(set(first.values())) == 1, "the hosted set-up cells differ: " + ", ".join(first)


def test_the_hosted_setup_cell_finds_the_course_from_the_notebooks_folder(tmp_path):
    # As on a hosted service: helpers is not installed (python -S: no site-packages), the kernel
    # runs in notebooks/. The cell must find the course folder above it and make helpers importable.
    import subprocess
    code = _setup_cell(NOTEBOOKS[0]) + "\nimport importlib.util\nprint(importlib.util.find_spec('helpers').origin)\n"
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO / "notebooks", capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"Course found in {REPO}" in r.stdout and str(REPO / "helpers" / "__init__.py") in r.stdout
    r = subprocess.run([sys.executable, "-S", "-c", _setup_cell(NOTEBOOKS[0])], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "upload or clone the whole folder" in r.stderr and "Traceback" not in r.stderr
