"""python -m mpipar.demo_collectives -- every allreduce algorithm, side by side, on the ranks you started.

    mpirun -n 4 python -m mpipar.demo_collectives [--size 1MiB] [--dtype float32] [--json out.json]

Each rank makes its own random vector; the ranks sum them with every hand-written
allreduce algorithm and with the MPI library's. For each algorithm rank 0 shows:
whether all ranks hold identical bits, whether the result equals a serial sum
(one process adding the p vectors in rank order) bit for bit, the largest
distance in ULPs, the error in units of u * sum|x_i| against the exact sum with
its bound p-1, and the time next to the alpha-beta model's prediction. Then who
sends what to whom at each step of ring allreduce, the other collectives checked
against the library, and the communication ledger.
"""
import time

from mpi4py import MPI
import numpy as np

from .cli import Parser, json_path_problem, parse_size, print0, run_main, write_json
from .collectives import ALGORITHMS, DTYPES, allgather, allreduce, broadcast, reduce_scatter
from .measure import numerics
from .measure.cost_model import CostModel
from .measure.ledger import CommLedger
from .measure.memory import too_big
from .measure.units import format_bytes


def build_parser():
    parser = Parser(prog="python -m mpipar.demo_collectives", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("1MiB"),
                        help="bytes per rank of the vector to reduce (default 1MiB; e.g. 8, 4KiB, 16MiB)")
    parser.add_argument("--dtype", default="float32", choices=[str(d) for d in DTYPES],
                        help="element type (default float32); 16-bit floats are reduced in float32")
    parser.add_argument("--repeat", type=int, default=5,
                        help="calls per algorithm; the table shows the median (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + r)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="predict with the default cost model instead of fitting one here (~1 s)")
    parser.add_argument("--json", metavar="PATH", help="rank 0 writes the results as JSON here")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, not {args.seed}")
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    dtype = next(d for d in DTYPES if str(d) == args.dtype)
    # the vector, every rank's copy (the references) and their float64 sums, per rank
    need = args.size * (4 + p * (1 + 16 // dtype.itemsize))
    problem = too_big(f"--size {format_bytes(args.size)}", need, p)
    problem = problem or json_path_problem(comm, args.json)
    if problem:
        parser.error(problem)
    n = max(1, args.size // dtype.itemsize)
    cost_model = CostModel() if args.no_calibrate else CostModel.calibrate(comm)
    x = _random(args.seed + rank, n, dtype)

    print0(comm, f"mpipar demo: hand-written collectives on {p} rank(s) -- "
                 f"{MPI.Get_library_version().splitlines()[0].strip()}")
    print0(comm, f"cost model: {cost_model.describe()}\n")

    everyone = allgather(comm, x[None], algorithm="mpi")  # all p inputs, for the references
    serial = everyone[0].copy()
    for r in range(1, p):
        serial = (serial + everyone[r]).astype(dtype)  # one process, rank order
    exact = everyone.astype(np.float64).sum(axis=0)
    abs_sum = np.abs(everyone.astype(np.float64)).sum(axis=0)

    rows = []
    with CommLedger(cost_model=cost_model) as led:
        results = {}
        for alg in (*ALGORITHMS["allreduce"], "mpi"):
            seconds = []
            for _ in range(args.repeat):
                comm.Barrier()
                t0 = time.perf_counter()
                y = allreduce(comm, x, algorithm=alg)
                seconds.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            results[alg] = y
            rows.append(dict(
                algorithm=alg, ranks_agree=numerics.ranks_agree(comm, y),
                bitwise_equal_serial=numerics.bitwise_equal(y, serial),
                max_ulp_vs_serial=numerics.max_ulp(y, serial),
                max_normalized_error=numerics.normalized_error(y, exact, abs_sum, dtype),
                bound=max(p - 1, 0) + (dtype.itemsize == 2 and alg == "mpi"),
                seconds=float(np.median(seconds)),
                predicted_seconds=cost_model.predict("allreduce", alg, p, x.nbytes)))
        for row in rows:
            row["bitwise_equal_mpi"] = numerics.bitwise_equal(results[row["algorithm"]], results["mpi"])
        others = _other_collectives(comm, x)
    _report_allreduce(comm, rows, n, dtype, x.nbytes)
    trace = _ring_trace(comm, x) if p <= 8 else None
    if trace:
        print0(comm, "\nwho sends what in ring allreduce (reduce-scatter steps, then allgather steps):")
        for step, msgs in trace:
            print0(comm, f"  step {step:>2}: " + ", ".join(
                f"{s}->{d} {format_bytes(b)}" for s, d, b in msgs))
    print0(comm, "\nthe other collectives, checked bit for bit against the MPI library's:")
    for name, ok, note in others:
        print0(comm, f"  {name:<15} {'identical' if ok else 'DIFFERENT'}  {note}")
    print0(comm, "\ncommunication ledger of rank 0 (seconds are this rank's wall time per call):")
    print0(comm, led.summary())

    if write_json(comm, args.json, {
            "world_size": p, "mpi_library": MPI.Get_library_version().splitlines()[0],
            "dtype": str(dtype), "count": n, "nbytes": int(x.nbytes),
            "cost_model": cost_model.to_dict(), "allreduce": rows,
            "other_collectives": [dict(op=a, identical_to_mpi=b, note=c) for a, b, c in others],
            "ring_trace": trace, "comm": led.to_dict()}):
        print(f"\nwrote {args.json}")
    return 0


def _random(seed, n, dtype):
    rng = np.random.default_rng(seed)
    if dtype.kind == "i":
        return rng.integers(-1000, 1000, n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def _report_allreduce(comm, rows, n, dtype, nbytes):
    p = comm.Get_size()
    print0(comm, f"allreduce (sum) of {n} {dtype} values ({format_bytes(nbytes)}) per rank")
    print0(comm, f"{'algorithm':<20}{'ranks agree':>12}{'= serial':>10}{'= MPI':>7}{'max ULP':>9}"
                 f"{'error/(u*sum|x|)':>18}{'bound':>7}{'time ms':>10}{'model ms':>10}")
    yes = {True: "yes", False: "no"}
    for r in rows:
        print0(comm, f"{r['algorithm']:<20}{yes[r['ranks_agree']]:>12}{yes[r['bitwise_equal_serial']]:>10}"
                     f"{yes[r['bitwise_equal_mpi']]:>7}{r['max_ulp_vs_serial']:>9.0f}"
                     f"{r['max_normalized_error']:>18.3f}{r['bound']:>7}"
                     f"{r['seconds'] * 1e3:>10.3f}{r['predicted_seconds'] * 1e3:>10.3f}")
    if p > 1:
        print0(comm, "'= serial' is bitwise equality with one process adding the p vectors in rank "
                     "order.\nAlgorithms that add in another order differ in the last bits, always "
                     f"within the bound: any order of {p} terms errs by at most {p - 1} u sum|x|.\n"
                     "Every rank still holds identical bits: each element is reduced once and copied, "
                     "or by both partners in the same order.\n"
                     "ULP distances are large where the p values nearly cancel (a sum near 0 has tiny "
                     "ULPs);\nthe normalised error, measured against the size of the terms, stays "
                     "within its bound.")


def _ring_trace(comm, x):
    """Every message of one ring allreduce, gathered to rank 0 and grouped by step."""
    with CommLedger(trace=True) as led:
        allreduce(comm, x, algorithm="ring")
    mine = led.records[0]["trace"]
    everyone = comm.gather(mine, root=0)
    if comm.Get_rank() != 0 or comm.Get_size() == 1:
        return None
    steps = {}
    for msgs in everyone:
        for step, src, dst, nb in msgs:
            steps.setdefault(step, []).append((src, dst, nb))
    return [(s, sorted(m)) for s, m in sorted(steps.items())]


def _other_collectives(comm, x):
    """allgather with uneven shards, reduce_scatter and broadcast: auto vs the library."""
    p, rank = comm.Get_size(), comm.Get_rank()
    rows = np.repeat(x[:8][None], rank + 1, axis=0)  # rank r contributes r+1 rows
    checks = []
    ours, lib = allgather(comm, rows), allgather(comm, rows, algorithm="mpi")
    checks.append(("allgather", numerics.bitwise_equal(ours, lib),
                   f"uneven shards: rank r gives r+1 rows -> {ours.shape[0]} rows"))
    ints = (np.arange(x.size) % 7 + rank).astype(np.int64)
    ours, lib = reduce_scatter(comm, ints), reduce_scatter(comm, ints, algorithm="mpi")
    checks.append(("reduce_scatter", numerics.bitwise_equal(ours, lib) and comm.allreduce(
        numerics.bitwise_equal(ours, lib), op=MPI.LAND), f"int64: rank {rank} got {ours.size} values"))
    root = p - 1
    ours, lib = broadcast(comm, x, root=root), broadcast(comm, x, root=root, algorithm="mpi")
    checks.append(("broadcast", numerics.bitwise_equal(ours, lib), f"from root {root}"))
    return [(name, bool(comm.allreduce(ok, op=MPI.LAND)), note) for name, ok, note in checks]


if __name__ == "__main__":
    run_main(main)
