"""The lessons' exercise checks pass the reference answers of lessons/solutions/ and fail every
planted wrong answer with a message that says what is wrong."""
from pathlib import Path
import sys

import numpy as np
import pytest

LESSONS = Path(__file__).resolve().parents[2] / "lessons"
sys.path.insert(0, str(LESSONS))
import checks  # noqa: E402
from wrong_answers import WRONG  # noqa: E402


def solution(name):
    """The function the reference answer file defines (compiled under its own path, so that
    inspect.getsource finds it, as it finds a notebook cell's)."""
    path = LESSONS / "solutions" / f"{name}.py"
    space = {"np": np}
    exec(compile(path.read_text(), str(path), "exec"), space)
    return next(v for k, v in space.items() if callable(v) and not k.startswith("_") and k != "np")


def test_every_exercise_has_a_solution_and_planted_wrong_answers():
    names = set(checks.CHECKS)
    assert names == {p.stem for p in (LESSONS / "solutions").glob("*.py")} == set(WRONG)


@pytest.mark.parametrize("name", sorted(checks.CHECKS))
def test_the_reference_answer_passes(name, capsys):
    assert checks.check(name, solution(name))
    assert f"{name}: right" in capsys.readouterr().out


@pytest.mark.parametrize("name, wrong, says", [(n, w, s) for n, cases in WRONG.items() for w, s in cases],
                         ids=lambda v: getattr(v, "__name__", None))
def test_a_planted_wrong_answer_fails_saying_why(name, wrong, says, capsys, monkeypatch):
    monkeypatch.delenv(checks.STRICT, raising=False)
    assert not checks.check(name, wrong)
    out = capsys.readouterr().out
    assert "not yet right" in out and says in out, out
    monkeypatch.setenv(checks.STRICT, "strict")
    with pytest.raises(AssertionError, match=name):
        checks.check(name, wrong)


def test_a_stub_is_not_done_yet_and_strict_mode_refuses_it(capsys, monkeypatch):
    def stub(*args):
        raise NotImplementedError("write it")
    monkeypatch.delenv(checks.STRICT, raising=False)
    for name in checks.CHECKS:
        assert not checks.check(name, stub)
        assert "not done yet" in capsys.readouterr().out
    monkeypatch.setenv(checks.STRICT, "strict")
    with pytest.raises(NotImplementedError):
        checks.check("03_argmax", stub)
