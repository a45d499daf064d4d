"""The README's Python snippets run as written: on 2 ranks, from a clean temporary folder."""
from pathlib import Path
import re

import pytest

from mpipar import launch

README = Path(__file__).resolve().parents[2] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_on_two_ranks(index, tmp_path):
    script = tmp_path / f"readme_{index}.py"
    script.write_text(SNIPPETS[index])
    job = launch.run(str(script), n=2, timeout=240)  # raises with the output if it fails
    assert "Traceback" not in job.stdout + job.stderr
