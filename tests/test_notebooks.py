"""Static checks of every notebook (no execution, fast): the course's shape and its import rule.

* the first markdown cell states learning objectives and a "run time" line;
* the last markdown cell is "Checks for understanding";
* code cells import only from ``helpers``, the standard library and the course's public libraries;
* no notebook defines (at the top level of a cell) a function or class that ``helpers`` provides:
  notebooks import the tested version, never paste it.
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


def _code(path: Path) -> list[tuple[int, ast.Module]]:
    return [(i, _parse(c.source)) for i, c in enumerate(_cells(path, "code"), start=1)]


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
    again = [f"code cell {i}: {name}" for i, tree in _code(path) for name in _defined(tree) if name in provided]
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
