"""Checked exercises: the student writes a key piece of the course, these checks grade it.

One source: each exercise is a code cell tagged ``exercise`` in a committed notebook, whose
solution sits between ``# BEGIN SOLUTION`` and ``# END SOLUTION``. ``build`` writes the student
copies, ``exercises/NN_*.ipynb``, with those regions replaced by ``raise NotImplementedError``
and every output cleared; ``check`` compares the student's function with helpers' tested
version on small fixed inputs and on edge cases (the checks: ``helpers.exercise_checks``).

    python -m helpers.exercises build [--force]     # make exercises
    python -m helpers.exercises check [NAME ...]    # make check: the filled-in exercises/ notebooks

In a notebook, the cell after an exercise:

    check("focal_loss", my_focal_loss)              # ✓ focal_loss: 5 checks passed
"""
from __future__ import annotations

__all__ = ["EXERCISES", "Exercise", "CheckResult", "check", "strip_solutions", "student_notebook",
           "build", "load_student_function", "main"]

import argparse
import hashlib
import json
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nbformat
import torch

from .data import PROJECT
from .exercise_checks import (CONFUSION_MATRIX, ECE, FOCAL_LOSS, HFLIP, MIX_CONV, TRAIN_STEP, Check,
                              Mismatch)

NOTEBOOKS = PROJECT / "notebooks"
EXERCISES_DIR = PROJECT / "exercises"
TAG = "exercise"                                    # the cell tag that marks an exercise cell
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"


# ---------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Exercise:
    """One exercise: where its cell lives, what the student's function is called, what it is checked against."""
    notebook: str                   # file in notebooks/ whose `exercise` cell holds the solution
    function: str                   # the name that cell defines
    reference: str                  # helpers' tested version, named for the student
    checks: Sequence[Check]         # (what it checks, check), run in order


EXERCISES: dict[str, Exercise] = {
    "hflip": Exercise("01_data_and_augmentation.ipynb", "my_hflip", "helpers.augment.hflip", HFLIP),
    "mix_conv": Exercise("02_model.ipynb", "my_mix_conv", "helpers.model.MixConv._naive", MIX_CONV),
    "focal_loss": Exercise("03_focal_loss.ipynb", "my_focal_loss", "helpers.losses.FocalLoss", FOCAL_LOSS),
    "train_step": Exercise("04_optimiser_and_scheduler.ipynb", "my_train_step", "helpers.engine.train_step",
                           TRAIN_STEP),
    "confusion_matrix": Exercise("06_confusion_matrix_analysis.ipynb", "my_confusion_matrix",
                                 "helpers.analysis.confusion_matrix", CONFUSION_MATRIX),
    "ece": Exercise("06_confusion_matrix_analysis.ipynb", "my_ece",
                    "helpers.analysis.expected_calibration_error", ECE),
}


# ---------------------------------------------------------------------------- running the checks

@dataclass(frozen=True)
class CheckResult:
    """What ``check`` found: true when every check passed; shows as its one-line message."""
    name: str
    status: str                     # "passed", "not written" or "failed"
    message: str

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:      # a notebook shows the message, not a dataclass
        return self.message

    __str__ = __repr__


def _student_frames(exc: BaseException, fn: Callable) -> list[traceback.FrameSummary]:
    code = getattr(fn, "__code__", None)
    return [f for f in traceback.extract_tb(exc.__traceback__) if code and f.filename == code.co_filename]


def _where(exc: BaseException, fn: Callable) -> str:
    """' (line N of fn)' for the deepest frame of the traceback inside the student's code, else ''."""
    frames = _student_frames(exc, fn)
    return f" (line {frames[-1].lineno - fn.__code__.co_firstlineno + 1} of {fn.__name__})" if frames else ""


def _is_stub(exc: BaseException, fn: Callable) -> bool:
    # The stub's own raise, not a NotImplementedError from inside torch (an op missing for a dtype).
    if not isinstance(exc, NotImplementedError):
        return False
    code, last = getattr(fn, "__code__", None), traceback.extract_tb(exc.__traceback__)[-1]
    return code is None or (last.filename, last.name) == (code.co_filename, code.co_name)


def check(name: str, fn: Callable) -> CheckResult:
    """Run exercise ``name``'s checks on ``fn``; stop at the first failure. No traceback: one line."""
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; there are: {', '.join(EXERCISES)}")
    checks = EXERCISES[name].checks
    for i, (what, run) in enumerate(checks, start=1):
        try:
            with torch.random.fork_rng(devices=[]):  # the checks seed torch; the notebook's RNG stays as it was
                run(fn)
        except Mismatch as e:
            return CheckResult(name, "failed", f"✗ {name}: check {i}/{len(checks)} failed, {what}: {e}")
        except Exception as e:  # the student's code crashed: say where, in one line
            if _is_stub(e, fn):
                return CheckResult(name, "not written", f"○ {name}: not written yet (NotImplementedError)")
            first_line = (str(e).splitlines() or [""])[0][:300]
            return CheckResult(name, "failed", f"✗ {name}: check {i}/{len(checks)}, {what}, raised "
                                               f"{type(e).__name__}: {first_line}{_where(e, fn)}")
    return CheckResult(name, "passed", f"✓ {name}: {len(checks)} checks passed")


# ---------------------------------------------------------------------------- student notebooks

def strip_solutions(source: str) -> str:
    """Replace every ``# BEGIN SOLUTION`` … ``# END SOLUTION`` region by a ``raise NotImplementedError``
    at the marker's indentation, naming the function it sits in."""
    out, inside, function = [], False, "this"
    for n, line in enumerate(source.splitlines(), start=1):
        text = line.strip()
        if text.startswith(BEGIN):
            if inside:
                raise ValueError(f"line {n}: {BEGIN} inside another solution")
            inside, indent = True, line[:len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("write this: the body of {function}")')
        elif text.startswith(END):
            if not inside:
                raise ValueError(f"line {n}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            if m := re.match(r"\s*def (\w+)", line):
                function = m.group(1)
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _is_exercise(cell) -> bool:
    return cell.cell_type == "code" and TAG in cell.metadata.get("tags", [])


def _fingerprint(nb) -> str:
    """A hash of the cells' sources: unchanged means the student has not edited the notebook."""
    cells = [[c.cell_type, c.source] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def student_notebook(path: str | Path) -> nbformat.NotebookNode:
    """The student copy of a course notebook: solutions stripped, all outputs cleared."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if _is_exercise(cell):
                cell.source = strip_solutions(cell.source)
    nb.metadata.pop("widgets", None)  # saved widget state belongs to the cleared outputs
    nb.metadata["exercises"] = {"built_from": f"notebooks/{Path(path).name}", "sources": _fingerprint(nb)}
    return nb


def build(out_dir: str | Path = EXERCISES_DIR, force: bool = False,
          notebooks_dir: str | Path = NOTEBOOKS) -> list[Path]:
    """Write the student notebooks into ``out_dir``; returns those now as built (written or up to date).

    A notebook the student has edited since it was built is kept (``force=True``
    overwrites it); an unedited one is rebuilt, so course updates reach it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for name in sorted({ex.notebook for ex in EXERCISES.values()}):
        target = out_dir / name
        fresh = nbformat.writes(student_notebook(Path(notebooks_dir) / name)) + "\n"
        if target.exists() and target.read_text(encoding="utf-8") == fresh:
            print(f"up to date: {target}")
        elif target.exists() and not force and _edited(target):
            print(f"kept {target}: it holds your edits (build --force overwrites it)")
            continue
        else:
            target.write_text(fresh, encoding="utf-8")
            print(f"wrote {target}")
        built.append(target)
    return built


def _edited(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return nb.metadata.get("exercises", {}).get("sources") != _fingerprint(nb)


def load_student_function(path: str | Path, function: str) -> Callable:
    """Run the exercise cell of notebook ``path`` that defines ``function``, alone, and return it."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if _is_exercise(cell) and re.search(rf"^def {function}\(", cell.source, re.M):
            # IPython magics (%time, !pip) are not Python: blank them, keeping the line numbers.
            source = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in cell.source.splitlines())
            namespace = {"__name__": "exercise"}
            exec(compile(source, f"{Path(path).name}, cell {i}", "exec"), namespace)
            return namespace[function]
    raise LookupError(f"no cell tagged {TAG!r} defines {function} in {path}")


def _check_notebooks(names: Sequence[str], out_dir: Path) -> bool:
    ok = True
    for name in names:
        ex = EXERCISES[name]
        path = out_dir / ex.notebook
        if not path.exists():
            print(f"✗ {name}: {path} not found (run `make exercises` first)")
            ok = False
            continue
        try:
            fn = load_student_function(path, ex.function)
        except Exception as e:  # a syntax error, a deleted cell: one line, not a traceback
            print(f"✗ {name}: the exercise cell of {path.name} does not run: {type(e).__name__}: {e}")
            ok = False
            continue
        result = check(name, fn)
        print(result)
        ok = ok and bool(result)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.exercises", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the student notebooks into exercises/")
    b.add_argument("--force", action="store_true", help="overwrite notebooks you have edited")
    c = sub.add_parser("check", help="check the exercises you wrote in exercises/")
    c.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(EXERCISES)})")
    for s in (b, c):
        s.add_argument("--dir", type=Path, default=EXERCISES_DIR, help="the student notebooks' folder")
    args = p.parse_args(argv)
    if args.command == "build":
        build(args.dir, force=args.force)
        return 0
    unknown = [n for n in args.names if n not in EXERCISES]
    if unknown:
        p.error(f"unknown exercise(s) {', '.join(unknown)}; there are: {', '.join(EXERCISES)}")
    return 0 if _check_notebooks(args.names or list(EXERCISES), args.dir) else 1


if __name__ == "__main__":
    sys.exit(main())
