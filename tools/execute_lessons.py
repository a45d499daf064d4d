"""Execute the lessons in place, so they are committed with their outputs (``make lessons``).

    python tools/execute_lessons.py [lessons/03_*.ipynb ...]      # default: every lesson

Each notebook runs top to bottom in a fresh kernel whose working directory is lessons/, with
one BLAS thread per rank (the Makefile exports it), and with the exercise cells as the student
sees them (stubs: their checks say "not done yet"). Then what differs from run to run without
teaching anything is stripped -- the execution timestamps in every cell's metadata -- so that a
diff shows what changed in the outputs. A notebook that raises is reported and left unchanged.
"""
from pathlib import Path
import sys
import time

from nbclient import NotebookClient
import nbformat

LESSONS = Path(__file__).resolve().parents[1] / "lessons"


def execute(path):
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(LESSONS)}}).execute()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(paths):
    failed = []
    for path in paths or sorted(LESSONS.glob("*.ipynb")):
        try:
            print(f"{Path(path).name}: {execute(path):.0f} s", flush=True)
        except Exception as e:  # report and go on: one broken lesson must not hide the others
            print(f"{Path(path).name}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            failed.append(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
