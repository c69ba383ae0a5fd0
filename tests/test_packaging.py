"""The project's packaging: environment.yml and pyproject.toml list the same packages."""
import re
import tomllib
from pathlib import Path

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


def test_torch_range_admits_both_machines():
    spec = _pyproject()["torch"]
    assert spec == ">=2.11,<2.15", "torch must admit 2.11 (GPU box) to 2.14.1 (CPU machines)"
    assert _pyproject()["torchvision"] == ">=0.26,<0.30"
