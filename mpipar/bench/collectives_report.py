"""What ``bench collectives`` computes from its timings (the JSON rows), and the tables it prints.

Bus bandwidth follows the nccl-tests convention (NVIDIA nccl-tests, doc/PERFORMANCE.md):
algorithm bandwidth S/t times the fraction of the payload S that the busiest
rank must send in an optimal algorithm, so the figure can be compared with the
hardware's link bandwidth whatever p is:

    allreduce       busbw = S/t * 2(p-1)/p
    allgather       busbw = S/t * (p-1)/p      (S = the whole gathered result)
    reduce_scatter  busbw = S/t * (p-1)/p      (S = the whole input)
    broadcast       busbw = S/t

The factor is :func:`mpipar.measure.cost_model.bandwidth_factor`, which also gives the
bandwidth lower bounds of Thakur, Rabenseifner & Gropp (2005):
``CostModel.lower_bound`` is factor * S * beta. GB here is 1e9 bytes.
"""
import numpy as np

from ..measure.cost_model import bandwidth_factor
from ..measure.units import format_bytes, format_seconds
from .table import Column, format_table

COLUMNS = """\
output columns (one table per op, one group of rows per size):
  size        payload S (allgather: the whole gathered result); ~ marks a rounded figure
  algorithm   hand-written algorithm, or "mpi" (the MPI library's own call);
              * marks the fastest at this size
  median      seconds per call: slowest rank, median over trials; min, max over trials
  busbw GB/s  bus bandwidth, nccl-tests convention: allreduce S/t*2(p-1)/p,
              allgather and reduce_scatter S/t*(p-1)/p, broadcast S/t
  predicted   the alpha-beta-gamma model's time (Thakur, Rabenseifner & Gropp 2005);
              for "mpi", the best hand-written algorithm's
  pred/meas   predicted / median: the model's error (1.00 = exact, below 1 = too optimistic)
  lower bnd   bandwidth lower bound: bytes that must leave the busiest rank * beta
  vs mpi      median / the MPI library's median at this size (below 1: faster)
--json PATH writes the same numbers, and the settings, for plotting.
Messages of 16-bit floats: "mpi" reduces them as float32 (twice the bytes)."""  # the --help epilog


def busbw_GBps(op, p, nbytes, seconds):
    """Bus bandwidth in GB/s (1e9 bytes) of one call that took ``seconds``."""
    return nbytes / seconds * bandwidth_factor(op, p) / 1e9


def make_row(op, algorithm, p, nbytes, count, times, iterations, cost_model):
    """One JSON row: per-call seconds of each trial (slowest rank) -> the contract's keys."""
    seconds = float(np.median(times))
    return {
        "op": op, "algorithm": algorithm, "bytes": int(nbytes), "count": int(count),
        "seconds": seconds, "seconds_min": float(min(times)), "seconds_max": float(max(times)),
        "trials": len(times), "iterations": int(iterations),
        "busbw_GBps": busbw_GBps(op, p, nbytes, seconds),
        "predicted_seconds": cost_model.predict(op, algorithm, p, nbytes),
        "lower_bound_seconds": cost_model.lower_bound(op, p, nbytes),
        "ratio_to_mpi": None,
        "pred_over_meas": cost_model.predict(op, algorithm, p, nbytes) / seconds if seconds > 0 else None,
    }


def add_ratios(rows):
    """Set ratio_to_mpi = seconds / the "mpi" row's seconds at the same op and size."""
    mpi = {(r["op"], r["bytes"]): r["seconds"] for r in rows if r["algorithm"] == "mpi"}
    for r in rows:
        ref = mpi.get((r["op"], r["bytes"]))
        r["ratio_to_mpi"] = r["seconds"] / ref if ref else None


# --- tables ----------------------------------------------------------------------------------

def ratio_text(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


OP_COLUMNS = [Column("size", format_bytes), Column("algorithm", align="<"),
              Column("median", format_seconds), Column("min", format_seconds),
              Column("max", format_seconds), Column("busbw GB/s", "{:.3f}".format),
              Column("predicted", format_seconds), Column("pred/meas"),
              Column("lower bnd", format_seconds), Column("vs mpi")]


def op_table(op, rows, p):
    """The detailed table of one op: a group of rows per size, '*' on the fastest there."""
    cells = []
    for nbytes in sorted({r["bytes"] for r in rows}):
        group = [r for r in rows if r["bytes"] == nbytes]
        fastest = min(group, key=lambda r: r["seconds"])
        for i, r in enumerate(group):
            star = "*" if r is fastest and len(group) > 1 else ""
            cells.append([nbytes if i == 0 else None, r["algorithm"] + star, r["seconds"],
                          r["seconds_min"], r["seconds_max"], r["busbw_GBps"],
                          r["predicted_seconds"], ratio_text(r["pred_over_meas"]),
                          r["lower_bound_seconds"] if i == 0 else None,
                          ratio_text(r["ratio_to_mpi"])])
    return format_table(OP_COLUMNS, cells, title=f"{op} on {p} rank(s)")


def grid(rows, key, algorithms):
    """Sizes down, ``algorithms`` across: each row's ``key``, as a table."""
    columns = [Column("size", format_bytes)] + [Column(a) for a in algorithms]
    cells = []
    for nbytes in sorted({r["bytes"] for r in rows}):
        value = {r["algorithm"]: r[key] for r in rows if r["bytes"] == nbytes}
        cells.append([nbytes] + [ratio_text(value.get(a)) for a in algorithms])
    return format_table(columns, cells)


def ratio_table(op, rows):
    """Sizes down, algorithms across: time / the MPI library's time (below 1: we are faster)."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows if r["algorithm"] != "mpi"))
    if not algorithms or all(r["ratio_to_mpi"] is None for r in rows):
        return ""
    return (f"{op}: time / MPI library's time (below 1.00 = faster than the library)\n"
            + grid(rows, "ratio_to_mpi", algorithms))


def error_table(op, rows, p):
    """Sizes down, every algorithm (mpi included) across: predicted / measured."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    if p < 2 or not algorithms:
        return ""
    return (f"{op}: predicted / measured (1.00 = exact; below 1: the model is too optimistic)\n"
            + grid(rows, "pred_over_meas", algorithms))


def header(p, library, dtype, cost_model, settings):
    """What was run and how it was measured, for the top of the output."""
    return "\n".join([
        f"mpipar bench collectives: {p} rank(s), {dtype}, {' '.join(library.split())}",
        f"cost model: {cost_model.describe()}",
        f"times are per call and the slowest rank's: median (min, max) of {settings['trials']} "
        f"trials, each >= {format_seconds(settings['target_trial_seconds'])} of calls (1 call for "
        f"big messages), after {settings['warmup']} warm-up call(s); check=False",
        "busbw: nccl-tests convention; predicted: alpha-beta-gamma model; "
        "lower bnd: bandwidth bound; vs mpi: time / the MPI library's time; * fastest",
    ])


def overhead_line(seconds):
    """The check_overhead_seconds measurement, in words."""
    if seconds > 0:
        return (f"argument check (check=True) adds {format_seconds(seconds)} per call "
                f"(allreduce, 8 B); not included below\n")
    return (f"argument check (check=True): lost in the timing noise here (measured "
            f"{format_seconds(seconds)}); not included below\n")
