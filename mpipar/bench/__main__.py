"""python -m mpipar.bench COMMAND -- mpipar's benchmarks: tables on stdout, JSON with --json.

    mpirun -n 4 python -m mpi4py -m mpipar.bench collectives [--ops allreduce] [--json out.json]
    python -m mpipar.bench COMMAND --help

Subcommands, one file each beside this one: collectives (a message-size sweep of
every algorithm of every collective), ledger (what recording in a CommLedger
costs), forward (the tensor-parallel model's forward and decoding time beside their
BLAS floor, with a profile and PyTorch alongside), tp-backward (the tensor-parallel
backward with and without the asynchronous linear's reductions on a thread), dp (a data-parallel
training step with and without overlapping the gradient all-reduce), memory (memory
per rank, bytes and step time of DP, ZeRO-1/2/3 and TP with and without SP), tradeoff
(accuracy against bytes and time of float16/bfloat16 wires, rounding and
deterministic mode), pp (pipeline step time and bubble of every schedule as the
number of micro-batches grows, beside the formulas), tune (every algorithm
timed over sizes at this world size: the decision table algorithm="auto" reads).
Without mpirun it runs as one rank.

This file only builds the parser from the subcommand modules, validates and
dispatches. Each module has ``add_parser(commands)``, which sets two defaults:
``check(args, comm)`` returns a problem message or None (no messages sent, except
to agree on rank 0's file system), and ``run(args, comm)`` does the work and
returns the exit status.
"""
from mpi4py import MPI

from ..cli import Parser, run_main, watchdog
from . import collectives, dp, forward, ledger, memory, pp, tp_backward, tradeoff, tune

SUBCOMMANDS = (collectives, tune, ledger, forward, tp_backward, dp, memory, pp, tradeoff)


def build_parser():
    """The argument parser of every subcommand (it prints from rank 0 only)."""
    parser = Parser(prog="mpipar.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    for sub in commands.choices.values():
        sub.add_timeout()
    return parser


def main(argv=None):
    """Parse, validate (identically on every rank), run; the exit status (2: bad usage)."""
    comm = MPI.COMM_WORLD
    args = build_parser().parse_args(argv)
    problem = args.check(args, comm)
    if problem:
        args.parser.error(problem)
    watchdog(comm, args.timeout)
    return args.run(args, comm)


if __name__ == "__main__":
    run_main(main)
