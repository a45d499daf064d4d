"""python -m mpipar.bench collectives -- time the hand-written collectives beside the MPI library's.

    mpirun -n 4 python -m mpi4py -m mpipar.bench collectives [--ops allreduce] [--json out.json]

How collectives measures one (op, algorithm, size):

1. The collective is called with check=False, so the small control message
   that compares every rank's arguments is not timed. That handshake is measured
   once on its own (allreduce of 8 B: median of paired trials, check=True minus
   check=False) and reported as check_overhead_seconds.
2. --warmup untimed calls. The fastest warm-up call of the slowest rank (an
   MPI.MAX allreduce, so every rank gets the same number) chooses the
   iterations per trial: enough for a trial to last >= 5 ms, but 1 for a message
   whose call already takes that long -- so 64 MiB costs warmup + trials calls.
3. --trials trials, each: barrier, time `iterations` calls, per-call time =
   trial time / iterations; the trial's time is the slowest rank's (MPI.MAX).
4. Reported: the median over trials (and min, max), bus bandwidth (nccl-tests
   convention, doc/PERFORMANCE.md; see mpipar.bench.collectives_report), the
   alpha-beta-gamma prediction cost_model.predict(op, algorithm, p, bytes) and the
   bandwidth lower bound cost_model.lower_bound(op, p, bytes) (Thakur, Rabenseifner
   & Gropp 2005), and the ratio to the MPI library's time at the same op and size.

Sizes are the payload S: the input of allreduce, reduce_scatter and broadcast,
the whole gathered result of allgather (each rank contributes S/p, rounded to
whole elements, at least one -- so allgather's sizes can differ slightly from the
nominal ones). All sizes are rounded down to whole elements of --dtype, at least one.
Every call includes the collective's private copy of its input (and, for
allgather with check=False, its exchange of lengths), "mpi" included.
"""
import argparse
import functools

from mpi4py import MPI
import numpy as np

from .. import collectives
from ..cli import Progress, comma_list, json_path_problem, parse_size, write_json
from ..collectives import ALGORITHMS, tuning
from ..measure import calibrate
from ..measure.cost_model import CostModel
from ..measure.memory import too_big
from ..measure.units import format_bytes
from . import collectives_report as report
from .timing import TARGET_TRIAL_SECONDS, calls_per_trial, time_call

COLLECTIVES = tuple(ALGORITHMS)  # allreduce, allgather, reduce_scatter, broadcast
CALLS = {"allreduce": collectives.allreduce, "allgather": collectives.allgather,
         "reduce_scatter": collectives.reduce_scatter, "broadcast": collectives.broadcast}
DTYPES = {str(d): d for d in collectives.DTYPES}
FITS = ("contention", "pingpong", "table")


def add_parser(commands):
    c = commands.add_parser(
        "collectives", help="message-size sweep of every collective algorithm vs the MPI library",
        description=__doc__.split("\n\n", 2)[2], epilog=report.COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--ops", type=comma_list, default=list(COLLECTIVES), metavar="LIST",
                   help=f"collectives to time, comma-separated (default: {','.join(COLLECTIVES)})")
    c.add_argument("--algorithms", type=comma_list, metavar="LIST",
                   help="algorithms, comma-separated; each op runs those it has (default: every "
                        "hand-written algorithm of each op, and mpi). Known: "
                        + "; ".join(f"{op}: {','.join(algs)}" for op, algs in ALGORITHMS.items())
                        + "; all: mpi")
    c.add_argument("--min-size", type=parse_size, default=8, metavar="SIZE",
                   help="smallest payload (default 8B); sizes are min-size * 8^k up to max-size")
    c.add_argument("--max-size", type=parse_size, default=64 << 20, metavar="SIZE",
                   help="largest payload, always included (default 64MiB); units B, KiB, MiB, GiB")
    c.add_argument("--trials", type=int, default=5, metavar="N",
                   help="timed trials per case; the median is reported (default 5)")
    c.add_argument("--dtype", default="float32", choices=list(DTYPES), metavar="NAME",
                   help=f"element type: {', '.join(DTYPES)} (default float32)")
    c.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed calls before the "
                   "trials; the fastest sets the iterations per trial (default 2, at least 1)")
    c.add_argument("--fit", choices=FITS, default="contention",
                   help="how the model's constants are measured: contention (every rank "
                        "exchanging at once, with the per-step Python overhead o; default), "
                        "pingpong (ranks 0 and 1 alone, o = 0), or table (the constants bench "
                        "tune stored for this world size); measured at sizes up to --max-size "
                        "(16 MiB at most): mpipar/measure/calibrate.py")
    c.add_argument("--no-calibrate", action="store_true", help="predict with the default "
                   "CostModel instead (no calibration, no --fit)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes every row and the settings here")
    c.add_argument("--quiet", action="store_true",
                   help="no progress bar (it goes to stderr; the tables go to stdout)")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    """Resolve and validate the options, the same way on every rank; None or the problem."""
    unknown = [op for op in args.ops if op not in COLLECTIVES]
    if unknown:
        return f"unknown op {unknown[0]!r}; choose from {', '.join(COLLECTIVES)}"
    wanted = args.algorithms or sorted({a for op in args.ops for a in ALGORITHMS[op]} | {"mpi"})
    for alg in wanted:
        if alg != "mpi" and not any(alg in ALGORITHMS[op] for op in args.ops):
            known = "; ".join(f"{op}: {', '.join(ALGORITHMS[op])}" for op in args.ops)
            return f"unknown algorithm {alg!r} for {', '.join(args.ops)} (known: {known}; and mpi)"
    args.plan = {op: [a for a in (*ALGORITHMS[op], "mpi") if a in wanted] for op in args.ops}
    if args.min_size > args.max_size:
        return (f"--min-size {format_bytes(args.min_size)} is larger than "
                f"--max-size {format_bytes(args.max_size)}")
    for name in ("trials", "warmup"):
        if getattr(args, name) < 1:
            return f"--{name} must be at least 1, not {getattr(args, name)}"
    if args.fit == "table" and not args.no_calibrate and tuning.table_for(comm)["model"] is None:
        return (f"--fit table: no tuning table with calibrated constants for {comm.Get_size()} "
                f"rank(s) (run 'python -m mpipar.bench tune' first, or set {tuning.ENV})")
    # the input, the output (allgather: p blocks) and the references' float64 copies
    p = comm.Get_size()
    return (too_big(f"--max-size {format_bytes(args.max_size)}", args.max_size * (4 + p), p)
            or json_path_problem(comm, args.json))


def cost_model(comm, args):
    """The model the predictions use: the defaults, a fresh calibration, or bench tune's."""
    if args.no_calibrate:
        return CostModel()
    if args.fit == "table":
        return tuning.table_for(comm)["model"]
    return CostModel.calibrate(comm, sizes=calibrate.sizes_up_to(args.max_size), method=args.fit)


def sizes(min_size, max_size, factor=8):
    """min_size * factor^k up to max_size, and max_size itself."""
    out, s = [], min_size
    while s < max_size:
        out.append(s)
        s *= factor
    return out + [max_size]


def payload(op, nbytes, dtype, p):
    """This rank's input for a payload of about ``nbytes``, and the exact payload in bytes."""
    count = max(1, nbytes // dtype.itemsize)
    if op == "allgather":  # each rank contributes S/p
        mine = max(1, round(count / p))
        return np.ones(mine, dtype), mine * p * dtype.itemsize
    return np.ones(count, dtype), count * dtype.itemsize


def measure(comm, call, warmup, trials):
    """Per-call seconds of each trial (slowest rank), and the iterations per trial."""
    iterations = calls_per_trial(comm, call, warmup)
    return time_call(comm, call, trials, repeat=iterations)["seconds"], iterations


def check_overhead(comm, dtype, warmup, trials):
    """Seconds the argument-agreement handshake adds to an 8-byte allreduce.

    Trials with and without the check alternate, so both see the same background
    load; the result is the median of the paired differences (noise can make it < 0).
    """
    x = payload("allreduce", 8, dtype, comm.Get_size())[0]
    calls = [functools.partial(collectives.allreduce, comm, x, algorithm="mpi", check=check)
             for check in (True, False)]
    diffs = []
    for _ in range(trials):
        checked, unchecked = (measure(comm, call, warmup, 1)[0][0] for call in calls)
        diffs.append(checked - unchecked)
    return float(np.median(diffs))


def sweep(comm, args, cost_model, progress):
    """Every op, size and algorithm of the plan measured: the rows; each op's tables printed."""
    p, dtype = comm.Get_size(), DTYPES[args.dtype]
    rows = []
    for op in args.ops:
        op_rows, done = [], set()
        for nominal in sizes(args.min_size, args.max_size):
            x, nbytes = payload(op, nominal, dtype, p)
            for alg in args.plan[op]:
                progress.start(f"measuring {op}", f"{op} {alg} {format_bytes(nbytes)}")
                if nbytes not in done:  # rounding to whole elements can repeat a size
                    call = functools.partial(CALLS[op], comm, x, algorithm=alg, check=False)
                    times, iterations = measure(comm, call, args.warmup, args.trials)
                    op_rows.append(report.make_row(op, alg, p, nbytes, nbytes // dtype.itemsize,
                                                   times, iterations, cost_model))
                progress.update()
            done.add(nbytes)
            del x
        report.add_ratios(op_rows)
        rows += op_rows
        progress.write(report.op_table(op, op_rows, p) + "\n" + report.ratio_table(op, op_rows) + "\n"
                       + report.error_table(op, op_rows, p) + "\n")
    return rows


def run(args, comm):
    """The sweep: the header, the check overhead, every op's tables on rank 0, and the JSON."""
    p = comm.Get_size()
    settings = dict(command="collectives", ops=args.ops, algorithms=args.plan,
                    min_size=args.min_size, max_size=args.max_size,
                    sizes=sizes(args.min_size, args.max_size), trials=args.trials,
                    dtype=args.dtype, warmup=args.warmup, calibrate=not args.no_calibrate,
                    fit=None if args.no_calibrate else args.fit,
                    json=args.json, quiet=args.quiet, target_trial_seconds=TARGET_TRIAL_SECONDS)
    library = MPI.Get_library_version().splitlines()[0]
    model = cost_model(comm, args)
    total = 1 + sum(len(algs) for algs in args.plan.values()) * len(settings["sizes"])
    with Progress(comm, total, quiet=args.quiet, unit="case") as progress:
        progress.write(report.header(p, library, args.dtype, model, settings))
        progress.start("measuring the check overhead", "check overhead")
        overhead = check_overhead(comm, DTYPES[args.dtype], args.warmup, args.trials)
        progress.update()
        progress.write(report.overhead_line(overhead))
        rows = sweep(comm, args, model, progress)
    result = {"benchmark": "collectives", "world_size": p, "mpi_library": library,
              "dtype": args.dtype, "cost_model": model.to_dict(),
              "check_overhead_seconds": overhead, "settings": settings, "rows": rows}
    if write_json(comm, args.json, result):
        print(f"wrote {args.json}", flush=True)
    return 0
