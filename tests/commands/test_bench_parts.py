"""The benchmarks' two shared pieces on one process: the table printer and the timing loop."""
from mpi4py import MPI
import pytest

from mpipar.bench.table import Column, format_table
from mpipar.bench.timing import calls_per_trial, medians, run_trials, time_call


def test_table_aligns_blanks_and_titles():
    columns = [Column("size", lambda n: f"{n} B"), Column("algorithm", align="<"), Column("x", width=4)]
    text = format_table(columns, [[8, "ring", 1.5], [None, "mpi", "-"]], title="allreduce", rule="-")
    assert text.splitlines() == [
        "== allreduce ========",
        "size  algorithm     x",
        "---------------------",
        " 8 B  ring        1.5",
        "      mpi           -",
    ]


def test_table_without_headers_has_no_header_line():
    text = format_table([Column(""), Column("", align="<")], [["a", "bb"], ["ccc", "d"]], indent="  ")
    assert text.splitlines() == ["    a  bb", "  ccc  d"]


def test_loop_alternates_calls_and_counts_them():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    figures = run_trials(MPI.COMM_SELF, calls, trials=2, warmup=1, repeat=3)
    assert order == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert set(figures) == {"a", "b"} and all(len(f["seconds"]) == 2 for f in figures.values())
    assert all(s >= 0 for f in figures.values() for s in f["seconds"])


def test_own_figures_are_reported_and_own_seconds_win():
    figures = time_call(MPI.COMM_SELF, lambda: 7.0, trials=3,
                        figures=lambda out: {"seconds": out, "phase": out / 7})
    assert figures == {"seconds": [7.0] * 3, "phase": [1.0] * 3}
    assert medians(figures) == {"seconds": 7.0, "phase": 1.0}


@pytest.mark.parametrize("target, most, expected", [(1.0, 10, 10), (0.0, 10, 1)])
def test_calls_per_trial_is_bounded(target, most, expected):
    assert calls_per_trial(MPI.COMM_SELF, lambda: None, 2, target=target, most=most) == expected


def test_error_table_has_every_algorithm_mpi_included_and_each_size():
    from mpipar.bench import collectives_report as report
    rows = [{"algorithm": a, "bytes": n, "pred_over_meas": q}
            for a, n, q in (("ring", 65536, 0.8), ("mpi", 65536, 0.5), ("ring", 1 << 20, 1.1),
                            ("mpi", 1 << 20, None))]
    text = report.error_table("allreduce", rows, 2)
    assert "predicted / measured" in text and "ring" in text and "mpi" in text
    assert "0.80" in text and "0.50" in text and "1.10" in text and "64 KiB" in text and "1 MiB" in text
    assert report.error_table("allreduce", rows, 1) == ""
