"""The project's packaging: environment.yml and pyproject.toml list the same packages; how `make test` splits the suite."""
import re
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge's name for the same package


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def _pyproject() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["dev"]
    return dict(map(_split, reqs))


def _environment() -> dict[str, str]:
    out, in_deps = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if re.match(r"^\S", line):  # a top-level key: are we in `dependencies:`?
            in_deps = line.startswith("dependencies:")
        m = re.match(r"^  - ([A-Za-z][^:#]*)$", line.rstrip())  # conda packages, not the pip: list
        if in_deps and m:
            name, spec = _split(m.group(1))
            if name not in ("python", "pip"):
                out[CONDA_TO_PIP.get(name, name)] = spec
    return out


def test_environment_yml_matches_pyproject():
    assert _environment() == _pyproject()


@pytest.mark.parametrize("package, admitted, refused", [
    ("torch", ["2.11.0", "2.14.1"], ["2.15.0"]),          # the GPU box runs 2.11, the CPU machines 2.14.1
    ("torchvision", ["0.26.0", "0.29.1"], ["0.30.0"]),
])
def test_version_ranges_admit_both_machines(package, admitted, refused):
    for source in (_pyproject(), _environment()):
        spec = SpecifierSet(source[package])
        assert all(v in spec for v in admitted), (package, str(spec))
        assert not any(v in spec for v in refused), (package, str(spec))


def test_installed_torch_is_admitted():
    import torch
    installed = Version(torch.__version__).base_version  # "2.14.1+cpu" → "2.14.1"
    assert installed in SpecifierSet(_pyproject()["torch"])


@pytest.mark.parametrize("name", ["analysis", "augment", "engine", "losses", "model", "optim", "plots",
                                  "reference", "widgets"])
def test_module_lists_its_public_api_at_the_top(name):
    import importlib
    import inspect
    module = importlib.import_module(f"helpers.{name}")
    source = (ROOT / "helpers" / f"{name}.py").read_text()
    assert source.count("__all__") == 1 and source.index("__all__") < source.index("\nimport "), \
        "one __all__, before the imports"
    assert all(hasattr(module, n) for n in module.__all__), "__all__ names something the module lacks"
    own = {n for n, obj in vars(module).items() if not n.startswith("_")
           and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__}
    assert own <= set(module.__all__), f"public but not in __all__: {sorted(own - set(module.__all__))}"


def test_make_test_keeps_the_notebooks_on_one_worker(request):
    """`make test` spreads the suite over workers by file (pytest-xdist), the notebooks as one unit:
    notebook 05 trains the run that 06 analyses (tests/conftest.py's scheduler)."""
    make = (ROOT / "Makefile").read_text()
    assert make.count("--dist loadfile") == 2, "make test and make test-fast use the scheduler"

    class Config:  # what the scheduler reads of pytest's config under `-n 2 --dist loadfile`
        def getvalue(self, name):
            return {"dist": "loadfile", "tx": ["2*popen"]}[name]

    scope = request.config.hook.pytest_xdist_make_scheduler(config=Config(), log=None)._split_scope
    assert scope("notebooks/05_training.ipynb::Cell 3") == scope("notebooks/06_confusion_matrix_analysis.ipynb::Cell 0")
    assert scope("tests/test_a.py::test_x") == scope("tests/test_a.py::test_y") != scope("tests/test_b.py::test_x")
    assert scope("tests/test_a.py::test_x") != scope("notebooks/05_training.ipynb::Cell 3")
