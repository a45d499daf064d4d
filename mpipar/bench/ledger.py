"""python -m mpipar.bench ledger -- what leaving a CommLedger open costs.

    mpirun -n 2 python -m mpi4py -m mpipar.bench ledger [--size 1MiB] [--trials 41]

Blocks of calls of one allreduce (ring, check=False) run alternately without
and with a ledger open, so both see the same background load. Each block's time
is the slowest rank's (MPI.MAX). The overhead is the median over trials of the
paired ratio (with / without) - 1. The per-call cost of recording alone is also
timed on one rank (COMM_SELF, 4-byte messages, where the algorithm does nothing).
"""
import argparse
import json
import time

from mpi4py import MPI
import numpy as np

from ..cli import parse_size
from ..collectives import allreduce
from ..measure.ledger import CommLedger


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
    return None


def _block(comm, x, calls, with_ledger):
    comm.Barrier()
    t0 = time.perf_counter()
    if with_ledger:
        with CommLedger():
            for _ in range(calls):
                allreduce(comm, x, algorithm="ring", check=False)
    else:
        for _ in range(calls):
            allreduce(comm, x, algorithm="ring", check=False)
    return comm.allreduce(time.perf_counter() - t0, op=MPI.MAX) / calls


def record_cost(repeats=20000):
    """Seconds a ledger adds to one call, measured where the call itself does no messaging."""
    x = np.ones(1, np.float32)
    times = []
    for with_ledger in (False, True, False, True):
        led = CommLedger() if with_ledger else None
        if led:
            led.__enter__()
        t0 = time.perf_counter()
        for _ in range(repeats):
            allreduce(MPI.COMM_SELF, x, algorithm="ring", check=False)
        times.append((time.perf_counter() - t0) / repeats)
        if led:
            led.__exit__(None, None, None)
    return min(times[1], times[3]) - min(times[0], times[2])


def run(args, comm):
    x = np.ones(max(1, args.size // 4), np.float32)
    for _ in range(2):  # warm-up
        _block(comm, x, args.calls, False)
        _block(comm, x, args.calls, True)
    off, on = [], []
    for _ in range(args.trials):
        off.append(_block(comm, x, args.calls, False))
        on.append(_block(comm, x, args.calls, True))
    ratios = np.array(on) / np.array(off)
    per_record = record_cost()
    result = {"benchmark": "ledger", "world_size": comm.Get_size(), "bytes": int(x.nbytes),
              "algorithm": "ring", "trials": args.trials, "calls_per_block": args.calls,
              "seconds_without": float(np.median(off)), "seconds_with": float(np.median(on)),
              "overhead": float(np.median(ratios) - 1),
              "overhead_quartiles": [float(q - 1) for q in np.percentile(ratios, [25, 75])],
              "record_seconds": per_record}
    if comm.Get_rank() == 0:
        print(f"allreduce (ring) of {x.nbytes} bytes on {comm.Get_size()} ranks, "
              f"{args.trials} paired trials of {args.calls} calls")
        print(f"  without a ledger  {result['seconds_without'] * 1e6:10.1f} us per call (median)")
        print(f"  with a ledger     {result['seconds_with'] * 1e6:10.1f} us per call (median)")
        q1, q3 = result["overhead_quartiles"]
        print(f"  overhead          {100 * result['overhead']:+10.2f} %  (median of paired ratios; "
              f"quartiles {100 * q1:+.2f} %, {100 * q3:+.2f} %)")
        print(f"  recording alone   {per_record * 1e6:10.2f} us per call (one rank, no messages)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return 0
