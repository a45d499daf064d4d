"""Command-line plumbing shared by the entry points: print once, fail once, never hang.

Every rank parses the same argv and validates the same inputs, so every rank
reaches the same verdict without sending a message. Only rank 0 speaks.
"""
import argparse
import os
import re
import sys
import time

UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def print0(comm, *args, **kwargs):
    """print() on rank 0 only, flushed so output interleaves sensibly with other ranks'."""
    if comm.Get_rank() == 0:
        print(*args, **kwargs, flush=True)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help and error messages appear once, from rank 0.

    On an error every rank raises SystemExit(2), as argparse does; :func:`run_main`
    turns that into a clean exit of the whole job.
    """

    def _print_message(self, message, file=None):
        if world().Get_rank() == 0:
            super()._print_message(message, file)


def parse_size(text):
    """'8', '8B', '4KiB', '1MiB', '64MiB' -> bytes (binary units, whole numbers)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (a whole number with B, KiB, MiB or GiB, e.g. 8, 4KiB, 64MiB)")
    nbytes = int(match.group(1)) * UNITS[match.group(2).lower()]
    if nbytes < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1 byte")
    return nbytes


def comma_list(text):
    """'a, b,a' -> ['a', 'b'] (repeats dropped, order kept)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return list(dict.fromkeys(items))


def json_path_problem(comm, path):
    """A message if rank 0 cannot write ``path`` (None for no path): only rank 0 writes,
    so only its file system counts; its verdict is sent to every rank (control data)."""
    if not path:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    bad = None if os.access(folder, os.W_OK) else f"cannot write --json {path!r}"
    return comm.bcast(bad if comm.Get_rank() == 0 else None, root=0)


def run_main(main, argv=None, grace_seconds=20.0):
    """Run ``main(argv)`` (it returns an exit status) and end the job cleanly.

    A usage error (argparse's SystemExit) or a ValueError -- raised identically
    on every rank, since inputs are validated before any message is sent --
    becomes one message from rank 0 and exit status 2 on every rank. Ranks meet
    at a barrier first, so rank 0's message is out before anyone leaves, then
    finalize MPI (under ``python -m mpi4py`` a bare non-zero exit would be an
    MPI_Abort). If the barrier does not complete within ``grace_seconds`` -- a
    rank failed alone, which is a bug -- the job is aborted rather than left
    hanging. Any other exception propagates: ``python -m mpi4py`` aborts the job.
    """
    from mpi4py import MPI
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except ValueError as error:
        print0(MPI.COMM_WORLD, f"error: {error}", file=sys.stderr)
        status = 2
    status = status or 0
    if status:
        sys.stdout.flush()
        sys.stderr.flush()
        barrier = MPI.COMM_WORLD.Ibarrier()
        deadline = time.monotonic() + grace_seconds
        while not barrier.Test():
            if time.monotonic() > deadline:
                MPI.COMM_WORLD.Abort(status)
            time.sleep(1e-3)
        MPI.Finalize()
    sys.exit(status)
