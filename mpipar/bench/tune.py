"""python -m mpipar.bench tune -- measure every algorithm, write the decision table ``auto`` uses.

    mpirun -n 4 python -m mpi4py -m mpipar.bench tune [--ops allreduce] [--output PATH] [--verify]

For each op and each size (min-size * 4^k up to max-size), every hand-written
algorithm and the MPI library's call are timed in alternating trials (trial t
of each algorithm in turn, so all see the same background load; each trial the
slowest rank's per-call time, check=False); the median of the trials decides.
Neighbouring sizes with the same winner merge into one range; a range ends at
the geometric mean of the last size it won and the first it lost. The table
(format: mpipar/collectives/tuning.py) goes to --output, by default the per-user
cache that ``auto`` reads for this host, MPI library and world size, and is
printed as decision rules in the style of Open MPI's coll_tuned fixed rules.

--verify measures again, alternating ``auto`` (now reading the new table), every
hand-written algorithm and ``mpi``, and prints auto / best and auto / mpi per size, and
auto / itself (auto over the algorithm it runs, called by name): the noise floor.
"""
import argparse
import functools
import math
import os
import socket

from mpi4py import MPI
import numpy as np

from ..cli import Progress, comma_list, json_path_problem, parse_size, write_json
from ..collectives import ALGORITHMS, tuning
from ..measure import calibrate
from ..measure.cost_model import CostModel
from ..measure.memory import too_big
from ..measure.units import format_bytes, format_seconds
from .collectives import CALLS, DTYPES, payload
from .collectives import sizes as collectives_sizes
from .table import Column, format_table
from .timing import calls_per_trial, one_trial, slowest


def add_parser(commands):
    c = commands.add_parser("tune", help="measure every algorithm over sizes; write auto's "
                            "decision table", description=__doc__.split("\n\n", 2)[2],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--ops", type=comma_list, default=list(ALGORITHMS), metavar="LIST",
                   help=f"collectives to tune (default: {','.join(ALGORITHMS)})")
    c.add_argument("--min-size", type=parse_size, default=8, metavar="SIZE", help="default 8B")
    c.add_argument("--max-size", type=parse_size, default=16 << 20, metavar="SIZE",
                   help="default 16MiB; sizes are min-size * 4^k, and max-size")
    c.add_argument("--trials", type=int, default=7, metavar="N", help="alternating trials (default 7)")
    c.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed calls (default 2)")
    c.add_argument("--dtype", default="float32", choices=list(DTYPES), metavar="NAME")
    c.add_argument("--output", metavar="PATH", help="where rank 0 writes the table (default: "
                   "the cache auto reads, $XDG_CACHE_HOME/mpipar/tuning/<host>-<mpi>-p<p>.json)")
    c.add_argument("--no-calibrate", action="store_true",
                   help="do not store calibrated cost-model constants in the table")
    c.add_argument("--verify", action="store_true", help="measure auto against the best and mpi")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the table and the --verify rows here")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    unknown = [op for op in args.ops if op not in ALGORITHMS]
    if unknown:
        return f"unknown op {unknown[0]!r}; choose from {', '.join(ALGORITHMS)}"
    if args.min_size > args.max_size:
        return f"--min-size {format_bytes(args.min_size)} is larger than --max-size"
    if args.trials < 1 or args.warmup < 1:
        return "--trials and --warmup must be at least 1"
    p = comm.Get_size()
    return (too_big(f"--max-size {format_bytes(args.max_size)}", args.max_size * (4 + p), p)
            or json_path_problem(comm, args.json))


def sizes(lo, hi):
    """lo * 4^k up to hi, and hi itself."""
    return collectives_sizes(lo, hi, factor=4)


def alternate(comm, calls, warmup, trials):
    """({name: median per-call seconds}, {name: [per-call seconds of each trial]}): each
    call's trials interleaved with the others', so trial t of every call sees the same load,
    in an order rotated from trial to trial."""
    repeat = {name: calls_per_trial(comm, call, warmup) for name, call in calls.items()}
    seconds = {name: [] for name in calls}
    names = list(calls)
    for t in range(trials):  # each trial starts one call later: no call always runs last
        for name in names[t % len(names):] + names[:t % len(names)]:
            seconds[name].append(slowest(comm, one_trial(comm, calls[name], repeat[name])["seconds"]))
    return {name: float(np.median(s)) for name, s in seconds.items()}, seconds


def measure_op(comm, op, args, progress, extra=()):
    """Rows {bytes, seconds: {algorithm: median}} for every size of one op."""
    p, dtype, rows = comm.Get_size(), DTYPES[args.dtype], []
    for nominal in sizes(args.min_size, args.max_size):
        x, nbytes = payload(op, nominal, dtype, p)
        progress.start(f"tuning {op}", f"{op} {format_bytes(nbytes)}")
        calls = {alg: functools.partial(CALLS[op], comm, x, algorithm=alg, check=False)
                 for alg in (*ALGORITHMS[op], "mpi", *extra)}
        medians, per_trial = alternate(comm, calls, args.warmup, args.trials)
        rows.append({"bytes": nbytes, "seconds": medians, "trials": per_trial})
        progress.update()
    return rows


KEEP = 1.03  #: rules: the previous size's winner keeps a size where it is within 3% of the fastest


def rules(op, rows):
    """Size ranges -> the fastest hand-written algorithm, neighbours with one winner merged.

    Where algorithms tie within the noise (at p = 2 naive, tree and recursive doubling
    send the same one message), the previous size's winner is kept if it is within
    ``KEEP`` of the fastest, so that the table does not flap between equals."""
    winners, last = [], None
    for r in rows:
        s = r["seconds"]
        best = min(ALGORITHMS[op], key=lambda a: s[a])
        if last is not None and s[last] <= KEEP * s[best]:
            best = last
        winners.append((r["bytes"], best))
        last = best
    out = []
    for (n, alg), nxt in zip(winners, winners[1:] + [None]):
        if nxt is None:
            out.append({"below": None, "algorithm": alg})
        elif nxt[1] != alg:
            out.append({"below": int(math.isqrt(n * nxt[0])) + 1, "algorithm": alg})
    return out


def paired_ratio(row, a, b):
    """Median over trials of a's time / b's in the same trial (the trials alternate, so the
    pair saw the same background load: steadier than a ratio of two medians)."""
    return float(np.median(np.asarray(row["trials"][a]) / np.asarray(row["trials"][b])))


def ratio_table(op, rows, p):
    """Per size: the fastest algorithm, and auto's time / the best's and / mpi's (verify),
    each the median of per-trial ratios; and auto / itself, auto's time over the very same
    algorithm called by name in the same trials: the noise floor of the other two ratios.
    (On the 16-core machine it spread 0.78-1.28 at 512 KiB-16 MiB, and at 8-512 B it was
    1.00-1.14, auto's look-up of its choice included.)"""
    cols = [Column("size", format_bytes), Column("best", align="<"), Column("best time", format_seconds),
            Column("auto", align="<"), Column("auto / best"), Column("auto / mpi"),
            Column("auto / itself")]
    cells = []
    for r in rows:
        s, own = r["seconds"], r.get("auto_algorithm")
        best = min(ALGORITHMS[op], key=lambda a: s[a])
        r["auto_over_best"] = paired_ratio(r, "auto", best)
        r["auto_over_mpi"] = paired_ratio(r, "auto", "mpi")
        r["auto_over_itself"] = paired_ratio(r, "auto", own) if own in s else None
        cells.append([r["bytes"], best, s[best], own or "-", f"{r['auto_over_best']:.2f}",
                      f"{r['auto_over_mpi']:.2f}",
                      "-" if r["auto_over_itself"] is None else f"{r['auto_over_itself']:.2f}"])
    itself = [r["auto_over_itself"] for r in rows if r["auto_over_itself"] is not None]
    floor = (f"\nauto / itself {min(itself):.2f}-{max(itself):.2f}: two measurements of one "
             "algorithm differ that much here, so auto / best inside that spread is noise"
             if itself else "")
    return format_table(cols, cells, title=f"{op}: auto with the table, {p} rank(s); "
                        "ratios: medians of per-trial ratios") + floor


def run(args, comm):
    p = comm.Get_size()
    library = MPI.Get_library_version().splitlines()[0]
    model = None if args.no_calibrate else CostModel.calibrate(
        comm, sizes=calibrate.sizes_up_to(args.max_size))
    plan = len(args.ops) * len(sizes(args.min_size, args.max_size)) * (2 if args.verify else 1)
    with Progress(comm, plan, quiet=args.quiet, unit="size") as progress:
        measured = {op: measure_op(comm, op, args, progress) for op in args.ops}
        table = {"format": tuning.FORMAT, "version": tuning.VERSION, "world_size": p,
                 "host": socket.gethostname(), "mpi_library": " ".join(library.split()),
                 "dtype": args.dtype, "rules": {op: rules(op, rows) for op, rows in measured.items()},
                 "measured": measured}
        if model is not None:
            table["cost_model"] = model.to_dict()
        path = args.output or tuning.cache_path(p)
        if comm.Get_rank() == 0:
            tuning.write(path, table)
        comm.Barrier()
        progress.write(tuning.rules_text(table) + f"\nwrote {path}\n")
        verified = {}
        if args.verify:
            with _using(comm, path):
                for op in args.ops:
                    rows = verified[op] = measure_op(comm, op, args, progress, extra=("auto",))
                    for r in rows:
                        r["auto_algorithm"] = tuning.choose(table, op, r["bytes"])
                    progress.write(ratio_table(op, rows, p) + "\n")
    if write_json(comm, args.json, {"benchmark": "tune", "world_size": p, "table_path": path,
                                    "table": table, "verify": verified}):
        print(f"wrote {args.json}", flush=True)
    return 0


class _using:
    """MPIPAR_TUNING = path while verifying (rank 0's file), the communicator's cache reset."""

    def __init__(self, comm, path):
        self.comm, self.path = comm, path

    def __enter__(self):
        self.old = os.environ.get(tuning.ENV)
        os.environ[tuning.ENV] = self.comm.bcast(self.path, root=0)
        tuning.forget(self.comm)

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(tuning.ENV, None)
        else:
            os.environ[tuning.ENV] = self.old
        tuning.forget(self.comm)
        return False

