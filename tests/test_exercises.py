"""The checked exercises: solutions pass, stubs report "not written", wrong answers fail, and the
stripped student copies stay in step with the committed solutions (helpers.exercises)."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import nbformat
import pytest
import torch
import torch.nn.functional as F

from helpers.exercises import (BEGIN, END, EXERCISES, NOTEBOOKS, TAG, build, check, main,
                               strip_solutions)

NAMES = list(EXERCISES)


def _cell(name: str) -> str:
    """The source of exercise ``name``'s cell in its committed notebook."""
    ex = EXERCISES[name]
    nb = nbformat.read(NOTEBOOKS / ex.notebook, as_version=4)
    cells = [c.source for c in nb.cells if TAG in c.metadata.get("tags", []) and f"def {ex.function}(" in c.source]
    assert len(cells) == 1, f"{ex.notebook}: expected one cell tagged {TAG!r} defining {ex.function}, found {len(cells)}"
    return cells[0]


def _define(source: str, function: str):
    namespace: dict = {}
    exec(source, namespace)
    return namespace[function]


# Classic mistakes, one per exercise: the checks must catch each.
def _vertical_flip(x, flip):
    return torch.where(flip[:, None, None, None], x.flip(-2), x)


def _first_image_a(h, a, weight, bias, stride=1, padding=1):
    return sum(a[0, k] * F.conv2d(h, weight[k], None if bias is None else bias[k], stride, padding)
               for k in range(weight.shape[0]))


def _no_smoothing(logits, target, gamma, label_smoothing):
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def _no_zero_grad(model, loss_fn, optimizer, x, target, dtype=None):
    model.train()
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(x)
    loss = loss_fn(logits.float(), target)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _unweighted_ece(probs, labels, n_bins=15):
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    gaps = [(correct[m].mean() - conf[m].mean()).abs().item()
            for m in ((conf > lo) & (conf <= hi) for lo, hi in zip(edges[:-1], edges[1:])) if m.any()]
    return sum(gaps) / len(gaps)


def _transposed(labels, preds, num_classes):
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for t, p in zip(labels.tolist(), preds.tolist()):
        cm[p, t] += 1
    return cm


WRONG = {"hflip": _vertical_flip, "mix_conv": _first_image_a, "focal_loss": _no_smoothing,
         "train_step": _no_zero_grad, "ece": _unweighted_ece, "confusion_matrix": _transposed}


def test_every_exercise_has_a_wrong_answer_here():
    assert set(WRONG) == set(EXERCISES)


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(name):
    result = check(name, _define(_cell(name), EXERCISES[name].function))
    assert result, result.message
    assert result.message.startswith(f"✓ {name}: ")


@pytest.mark.parametrize("name", NAMES)
def test_stub_is_not_written_and_keeps_the_signature(name):
    source, function = _cell(name), EXERCISES[name].function
    stub = strip_solutions(source)
    assert BEGIN not in stub and END not in stub and "NotImplementedError" in stub
    solution_fn, stub_fn = _define(source, function), _define(stub, function)
    assert inspect.signature(stub_fn) == inspect.signature(solution_fn)  # the drift test
    result = check(name, stub_fn)
    assert not result and result.status == "not written" and "not written yet" in result.message


@pytest.mark.parametrize("name", NAMES)
def test_wrong_answer_fails(name):
    result = check(name, WRONG[name])
    assert not result and result.status == "failed", result.message
    assert result.message.startswith(f"✗ {name}: check ") and "\n" not in result.message


def test_a_crash_is_one_line_that_names_the_line():
    def my_hflip(x, flip):
        y = x + 1
        return y.view(-1, 4)  # 630 elements do not split into rows of 4: RuntimeError

    result = check("hflip", my_hflip)
    assert result.status == "failed" and "raised RuntimeError" in result.message
    assert "(line 3 of my_hflip)" in result.message and "\n" not in result.message


def test_a_library_not_implemented_error_is_not_a_stub():
    def my_hflip(x, flip):
        return _library_call(x)

    result = check("hflip", my_hflip)
    assert result.status == "failed" and "raised NotImplementedError: not for this dtype" in result.message


def _library_call(x):
    raise NotImplementedError("not for this dtype")  # as torch raises for an op a dtype lacks


def test_references_exist():
    # Each exercise names its reference in helpers: a rename there must show up here.
    for ex in EXERCISES.values():
        module, *attrs = ex.reference.removeprefix("helpers.").split(".")
        obj = importlib.import_module(f"helpers.{module}")
        for attr in attrs:
            obj = getattr(obj, attr)
        assert callable(obj), ex.reference


def test_check_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check("train_step", _define(_cell("train_step"), "my_train_step"))
    assert torch.equal(torch.rand(3), expected)


def test_strip_solutions_keeps_indentation_and_names_the_function():
    source = f"import torch\n\ndef my_f(x):\n    \"\"\"Doc.\"\"\"\n    {BEGIN}\n    y = x\n    {END}\n"
    assert strip_solutions(source) == ('import torch\n\ndef my_f(x):\n    """Doc."""\n'
                                       '    raise NotImplementedError("write this: the body of my_f")\n')
    with pytest.raises(ValueError, match="without"):
        strip_solutions(f"def f():\n    {BEGIN}\n    pass\n")


def test_solutions_are_used_only_by_their_check_cells():
    # The student copy's later cells must run with a stub in place: only the check cell may call it.
    for name, ex in EXERCISES.items():
        nb = nbformat.read(NOTEBOOKS / ex.notebook, as_version=4)
        users = [c.source for c in nb.cells if c.cell_type == "code" and ex.function in c.source
                 and TAG not in c.metadata.get("tags", [])]
        assert users == [f'# NBVAL_CHECK_OUTPUT\nfrom helpers.exercises import check\n\n'
                         f'check("{name}", {ex.function})'], f"{ex.notebook}: {ex.function} used outside its check"


def test_build_strips_clears_and_keeps_student_work(tmp_path, capsys):
    written = build(tmp_path)
    assert sorted(p.name for p in written) == sorted({ex.notebook for ex in EXERCISES.values()})
    for path in written:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code)
        exercise = [c.source for c in code if TAG in c.metadata.get("tags", [])]
        assert exercise and all(BEGIN not in s and "NotImplementedError" in s for s in exercise)
        assert nb.metadata["kernelspec"]["name"] == "python3"

    edited = tmp_path / EXERCISES["focal_loss"].notebook
    nb = nbformat.read(edited, as_version=4)
    nb.cells[0].source += "\nmy notes"
    nbformat.write(nb, edited)
    capsys.readouterr()
    rebuilt = build(tmp_path)
    assert edited not in rebuilt and len(rebuilt) == len(written) - 1  # the others are up to date
    assert "my notes" in nbformat.read(edited, as_version=4).cells[0].source
    assert f"kept {edited}" in capsys.readouterr().out
    assert edited in build(tmp_path, force=True)
    assert "my notes" not in nbformat.read(edited, as_version=4).cells[0].source

    # A copy that was only run (outputs, no edits) is rebuilt, so course updates reach it.
    ran = tmp_path / EXERCISES["hflip"].notebook
    nb = nbformat.read(ran, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    first_code.execution_count = 1
    nbformat.write(nb, ran)
    assert ran in build(tmp_path)
    assert next(c for c in nbformat.read(ran, as_version=4).cells if c.cell_type == "code").execution_count is None


def _put_solutions_back(out_dir):
    """Fill every student notebook in out_dir with the committed solutions (a student who finished)."""
    for name in {ex.notebook for ex in EXERCISES.values()}:
        nb = nbformat.read(out_dir / name, as_version=4)
        for cell, original in zip(nb.cells, nbformat.read(NOTEBOOKS / name, as_version=4).cells):
            if TAG in cell.metadata.get("tags", []):
                cell.source = original.source
        nbformat.write(nb, out_dir / name)


def test_check_command_on_stubs_then_solutions(tmp_path, capsys):
    build(tmp_path)
    capsys.readouterr()
    assert main(["check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(EXERCISES) and all("not written yet" in line for line in out)

    _put_solutions_back(tmp_path)
    assert main(["check", "--dir", str(tmp_path), "focal_loss", "ece"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["✓ focal_loss", "✓ ece"]


@pytest.mark.slow  # a fresh interpreter
def test_check_command_runs_as_a_module(tmp_path):
    # The real entry point `make check` uses, in a fresh interpreter: all solutions pass, exit 0.
    build(tmp_path)
    _put_solutions_back(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "helpers.exercises", "check", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("✓") == len(EXERCISES)


def test_check_command_reports_a_missing_notebook(tmp_path, capsys):
    assert main(["check", "--dir", str(tmp_path), "hflip"]) == 1
    assert "run `make exercises` first" in capsys.readouterr().out
