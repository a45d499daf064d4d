"""The shared command-line layer: --json written whole or not at all, its path checked first,
and one progress bar that stays off stdout, off when quiet and off on every rank but 0."""
import json
import os
import sys

import pytest

from mpipar.cli import Progress, json_path_problem, write_json


class FakeComm:
    """The few communicator calls the CLI layer makes, for one rank of a pretend job."""

    def __init__(self, rank=0):
        self.rank = rank

    def Get_rank(self):
        return self.rank

    def bcast(self, obj, root=0):
        return obj


def test_write_json_rank0_writes_others_do_not(tmp_path):
    path = tmp_path / "out.json"
    assert write_json(FakeComm(1), str(path), {"a": 1}) is False and not path.exists()
    assert write_json(FakeComm(0), None, {"a": 1}) is False
    assert write_json(FakeComm(0), str(path), {"a": [1, 2.5]}) is True
    assert json.loads(path.read_text()) == {"a": [1, 2.5]}
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary file left behind


def test_write_json_failure_keeps_the_old_file_whole(tmp_path):
    path = tmp_path / "out.json"
    write_json(FakeComm(0), str(path), {"old": True})
    with pytest.raises(TypeError):  # fails half-way through the dump
        write_json(FakeComm(0), str(path), {"rows": [1, 2], "bad": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["out.json"]


def test_json_is_always_valid_non_finite_numbers_become_null(tmp_path):
    import numpy as np
    path = tmp_path / "out.json"
    write_json(FakeComm(0), str(path), {"nan": float("nan"), "inf": [float("inf"), 1.0],
                                        "f32": np.float32("-inf"), "array": np.array([np.nan, 2.0])})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def strict(word):
        raise ValueError(f"not JSON: {word}")
    assert json.loads(text, parse_constant=strict) == {"nan": None, "inf": [None, 1.0], "f32": None,
                                                       "array": [None, 2.0]}


def test_json_path_problem_names_the_option_and_the_reason(tmp_path):
    comm = FakeComm(0)
    assert json_path_problem(comm, None) is None
    assert json_path_problem(comm, str(tmp_path / "ok.json")) is None
    missing = json_path_problem(comm, str(tmp_path / "no" / "x.json"))
    assert missing.startswith("cannot write --json") and "there is no folder" in missing
    assert "it is a folder" in json_path_problem(comm, str(tmp_path))


def test_progress_without_tqdm_one_line_per_stage(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    with Progress(FakeComm(0), total=3) as progress:
        for label in ("a 8 B", "a 64 B", "b 8 B"):
            progress.start(f"measuring {label[0]}", label)
            progress.update(loss="0.5")
        progress.write("table")
    out, err = capsys.readouterr()
    assert out == "table\n" and err == "measuring a ...\nmeasuring b ...\n"


@pytest.mark.parametrize("rank, quiet", [(0, True), (1, False)])
def test_progress_quiet_or_not_rank0_says_nothing(rank, quiet, capsys):
    with Progress(FakeComm(rank), total=2, quiet=quiet) as progress:
        progress.start("measuring a", "a")
        progress.update()
        progress.write("table")
    out, err = capsys.readouterr()
    assert err == "" and out == ("table\n" if rank == 0 else "")
