"""What ``python -m mpipar.bench`` computes from its timings, and the tables it prints.

Bus bandwidth follows the nccl-tests convention (NVIDIA nccl-tests, doc/PERFORMANCE.md):
algorithm bandwidth S/t times the fraction of the payload S that the busiest
link must carry in an optimal algorithm, so the figure can be compared with the
hardware's link bandwidth whatever p is:

    allreduce       busbw = S/t * 2(p-1)/p
    allgather       busbw = S/t * (p-1)/p      (S = the whole gathered result)
    reduce_scatter  busbw = S/t * (p-1)/p      (S = the whole input)
    broadcast       busbw = S/t

These factors are also the bandwidth lower bounds of Thakur, Rabenseifner &
Gropp (2005): ``CostModel.lower_bound`` is factor * S * beta. GB here is 1e9 bytes.
"""
import sys

import numpy as np

from ..measure.units import format_bytes, format_seconds

BUSBW_FACTOR = {
    "allreduce": lambda p: 2 * (p - 1) / p,
    "allgather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
    "broadcast": lambda p: 1.0,
}

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
  lower bnd   bandwidth lower bound: bytes that must leave the busiest rank * beta
  vs mpi      median / the MPI library's median at this size (below 1: faster)
--json PATH writes the same numbers, and the settings, for plotting.
Messages of 16-bit floats: "mpi" reduces them as float32 (twice the bytes)."""  # the --help epilog


def busbw_GBps(op, p, nbytes, seconds):
    """Bus bandwidth in GB/s (1e9 bytes) of one call that took ``seconds``."""
    return nbytes / seconds * BUSBW_FACTOR[op](p) / 1e9


def make_row(op, algorithm, p, nbytes, count, times, iterations, model):
    """One JSON row: per-call seconds of each trial (slowest rank) -> the contract's keys."""
    seconds = float(np.median(times))
    return {
        "op": op, "algorithm": algorithm, "bytes": int(nbytes), "count": int(count),
        "seconds": seconds, "seconds_min": float(min(times)), "seconds_max": float(max(times)),
        "trials": len(times), "iterations": int(iterations),
        "busbw_GBps": busbw_GBps(op, p, nbytes, seconds),
        "predicted_seconds": model.predict(op, algorithm, p, nbytes),
        "lower_bound_seconds": model.lower_bound(op, p, nbytes),
        "ratio_to_mpi": None,
    }


def add_ratios(rows):
    """Set ratio_to_mpi = seconds / the "mpi" row's seconds at the same op and size."""
    mpi = {(r["op"], r["bytes"]): r["seconds"] for r in rows if r["algorithm"] == "mpi"}
    for r in rows:
        ref = mpi.get((r["op"], r["bytes"]))
        r["ratio_to_mpi"] = r["seconds"] / ref if ref else None


# --- formatting ------------------------------------------------------------------------------

def fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def op_table(op, rows, p):
    """The detailed table of one op: a group of rows per size, '*' on the fastest there."""
    head = (f"{'size':>9}  {'algorithm':<19}{'median':>10}{'min':>9}{'max':>9}"
            f"{'busbw GB/s':>11}{'predicted':>11}{'lower bnd':>11}{'vs mpi':>8}")
    lines = [f"== {op} on {p} rank(s) " + "=" * max(0, len(head) - len(op) - 17), head]
    for nbytes in sorted({r["bytes"] for r in rows}):
        group = [r for r in rows if r["bytes"] == nbytes]
        fastest = min(group, key=lambda r: r["seconds"])
        for i, r in enumerate(group):
            star = "*" if r is fastest and len(group) > 1 else ""
            lines.append(
                f"{format_bytes(nbytes) if i == 0 else '':>9}  {r['algorithm'] + star:<19}"
                f"{format_seconds(r['seconds']):>10}{format_seconds(r['seconds_min']):>9}"
                f"{format_seconds(r['seconds_max']):>9}{r['busbw_GBps']:>11.3f}"
                f"{format_seconds(r['predicted_seconds']):>11}"
                f"{format_seconds(r['lower_bound_seconds']) if i == 0 else '':>11}"
                f"{fmt_ratio(r['ratio_to_mpi']):>8}")
    return "\n".join(lines)


def ratio_table(op, rows):
    """Sizes down, algorithms across: time / the MPI library's time (below 1: we are faster)."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows if r["algorithm"] != "mpi"))
    if not algorithms or all(r["ratio_to_mpi"] is None for r in rows):
        return ""
    columns = [(a, max(7, len(a) + 2)) for a in algorithms]
    lines = [f"{op}: time / MPI library's time (below 1.00 = faster than the library)",
             f"{'size':>9}" + "".join(f"{a:>{w}}" for a, w in columns)]
    for nbytes in sorted({r["bytes"] for r in rows}):
        ratio = {r["algorithm"]: r["ratio_to_mpi"] for r in rows if r["bytes"] == nbytes}
        lines.append(f"{format_bytes(nbytes):>9}"
                     + "".join(f"{fmt_ratio(ratio.get(a)):>{w}}" for a, w in columns))
    return "\n".join(lines)


def header(p, library, dtype, model, settings):
    """What was run and how it was measured, for the top of the output."""
    return "\n".join([
        f"mpipar bench collectives: {p} rank(s), {dtype}, {' '.join(library.split())}",
        f"cost model [{model.source}]: alpha = {model.alpha * 1e6:.2f} us/message, "
        f"beta = {model.beta * 1e9:.4f} ns/byte ({1e-9 / model.beta:.2f} GB/s), "
        f"gamma = {model.gamma * 1e9:.4f} ns/byte",
        f"times are per call and the slowest rank's: median (min, max) of {settings['trials']} "
        f"trials, each >= {settings['target_trial_seconds'] * 1e3:g} ms of calls (1 call for "
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


class Progress:
    """A progress bar on stderr (tqdm if installed, else one line per op); off when quiet."""

    def __init__(self, total, enabled):
        self.enabled, self.bar, self.last_op = enabled, None, None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, unit="case", leave=False)
            except ImportError:
                pass

    def start(self, op, label):
        """Say what is being measured now."""
        if self.bar is not None:
            self.bar.set_description(label)
        elif self.enabled and op != self.last_op:
            print(f"measuring {op} ...", file=sys.stderr, flush=True)
        self.last_op = op

    def done(self):
        if self.bar is not None:
            self.bar.update(1)

    def write(self, text):
        """Print to stdout without tearing the bar."""
        if self.bar is not None:
            self.bar.clear()
        print(text, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
