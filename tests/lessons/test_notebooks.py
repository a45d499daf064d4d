"""Every lesson, executed fresh from top to bottom with the reference answers of
lessons/solutions/ in place of the exercise stubs and every check strict: a lesson that raises,
or an exercise check that fails on its reference answer, fails here. (``make lessons`` executes
them as the student gets them, stubs and all, and saves the outputs.)"""
import os
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parents[2] / "lessons"


def with_solutions(path):
    import nbformat
    nb = nbformat.read(path, as_version=4)
    names = []
    for cell in nb.cells:
        name = cell.metadata.get("exercise")
        if name:
            cell.source = (LESSONS / "solutions" / f"{name}.py").read_text()
            names.append(name)
    return nb, names


@pytest.mark.lesson
@pytest.mark.parametrize("path", sorted(LESSONS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_lesson_runs_with_its_exercises_solved(path, monkeypatch):
    from nbclient import NotebookClient
    nb, names = with_solutions(path)
    monkeypatch.setenv("MPIPAR_EXERCISES", "strict")
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(LESSONS)}}).execute()
    for name in names:  # the check printed its verdict
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert any(f"{name}: right" in o.get("text", "") for o in outputs), name


def test_every_exercise_cell_names_a_solution():
    import nbformat
    for path in sorted(LESSONS.glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            name = cell.metadata.get("exercise")
            if name:
                assert (LESSONS / "solutions" / f"{name}.py").exists(), (path.name, name)
                assert "NotImplementedError" in cell.source, (path.name, name)  # a stub
