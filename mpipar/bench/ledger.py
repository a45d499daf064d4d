"""python -m mpipar.bench ledger -- what leaving a CommLedger open costs.

    mpirun -n 2 python -m mpi4py -m mpipar.bench ledger [--size 1MiB] [--trials 41]

Blocks of calls of one allreduce (ring, check=False) run alternately without
and with a ledger open, so both see the same background load. Each block's time
is the slowest rank's (MPI.MAX). The overhead is the median over trials of the
paired ratio (with / without) - 1. The per-call cost of recording alone is also
timed on one rank (COMM_SELF, 4-byte messages, where the algorithm does nothing).
"""
import argparse
import contextlib

from mpi4py import MPI
import numpy as np

from ..cli import json_path_problem, parse_size, write_json
from ..collectives import allreduce
from ..measure.ledger import CommLedger
from ..measure.memory import too_big
from ..measure.units import format_bytes, format_seconds
from .table import Column, format_table
from .timing import run_trials, time_call


def add_parser(commands):
    c = commands.add_parser("ledger", help="the cost of recording every collective in a CommLedger",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--size", type=parse_size, default=1 << 20, metavar="SIZE",
                   help="bytes per allreduce (default 1MiB)")
    c.add_argument("--trials", type=int, default=41, metavar="N",
                   help="paired trials; the median ratio is reported (default 41)")
    c.add_argument("--calls", type=int, default=10, metavar="N", help="calls per block (default 10)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    if args.trials < 1 or args.calls < 1:
        return "--trials and --calls must be at least 1"
    # the vector and the ring's work copy and blocks
    return (too_big(f"--size {format_bytes(args.size)}", 3 * args.size, comm.Get_size())
            or json_path_problem(comm, args.json))


def block(comm, x, calls, with_ledger):
    """A function that runs ``calls`` ring allreduces of ``x`` (check=False), in a ledger or not."""
    def run_block():
        with CommLedger() if with_ledger else contextlib.nullcontext():
            for _ in range(calls):
                allreduce(comm, x, algorithm="ring", check=False)
    return run_block


def record_cost(repeats=20000):
    """Seconds a ledger adds to one call, measured where the call itself does no messaging:
    blocks of ``repeats`` calls on one rank, alternately without and with a ledger; the
    difference of the fastest of each."""
    x = np.ones(1, np.float32)
    times = {False: [], True: []}
    for with_ledger in (False, True, False, True):
        call = block(MPI.COMM_SELF, x, repeats, with_ledger)
        times[with_ledger] += time_call(MPI.COMM_SELF, call, trials=1)["seconds"]
    return (min(times[True]) - min(times[False])) / repeats


def run(args, comm):
    x = np.ones(max(1, args.size // 4), np.float32)
    blocks = {False: block(comm, x, args.calls, False), True: block(comm, x, args.calls, True)}
    per_block = run_trials(comm, blocks, args.trials, warmup=2)
    off, on = (np.array(per_block[with_ledger]["seconds"]) / args.calls for with_ledger in (False, True))
    ratios = on / off
    per_record = record_cost()
    result = {"benchmark": "ledger", "world_size": comm.Get_size(), "bytes": int(x.nbytes),
              "algorithm": "ring", "trials": args.trials, "calls_per_block": args.calls,
              "seconds_without": float(np.median(off)), "seconds_with": float(np.median(on)),
              "overhead": float(np.median(ratios) - 1),
              "overhead_quartiles": [float(q - 1) for q in np.percentile(ratios, [25, 75])],
              "record_seconds": per_record}
    if comm.Get_rank() == 0:
        print_result(result)
    write_json(comm, args.json, result)
    return 0


def print_result(r):
    """The four figures, as a small table."""
    q1, q3 = (100 * q for q in r["overhead_quartiles"])
    print(f"allreduce (ring) of {format_bytes(r['bytes'])} on {r['world_size']} ranks, "
          f"{r['trials']} paired trials of {r['calls_per_block']} calls")
    rows = [("without a ledger", format_seconds(r["seconds_without"]), "per call (median)"),
            ("with a ledger", format_seconds(r["seconds_with"]), "per call (median)"),
            ("overhead", f"{100 * r['overhead']:+.2f} %",
             f"median of paired ratios; quartiles {q1:+.2f} %, {q3:+.2f} %"),
            ("recording alone", format_seconds(r["record_seconds"]), "per call (one rank, no messages)")]
    columns = [Column("", align="<"), Column(""), Column("", align="<")]
    print(format_table(columns, rows, indent="  "), flush=True)
