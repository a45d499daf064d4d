"""Command-line plumbing shared by the entry points: print once, fail once, never hang.

Every rank parses the same argv and validates the same inputs, so every rank
reaches the same verdict without sending a message. Only rank 0 speaks.
"""
import argparse
import sys


def world():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def print0(comm, *args, **kwargs):
    """print() on rank 0 only, flushed so output interleaves sensibly with other ranks'."""
    if comm.Get_rank() == 0:
        print(*args, **kwargs, flush=True)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help and error messages appear once, from rank 0.

    On an error every rank exits with status 2, as argparse does.
    """

    def _print_message(self, message, file=None):
        if world().Get_rank() == 0:
            super()._print_message(message, file)


def run_main(main, argv=None):
    """Run ``main(argv)``; a ValueError becomes one message from rank 0 and exit status 2.

    All ranks raise the same ValueError (inputs are validated identically before
    any message is sent), so all ranks exit together and nothing hangs. Any other
    exception propagates: under ``python -m mpi4py`` it aborts the whole job.
    """
    try:
        main(argv)
    except ValueError as e:
        if world().Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def parse_size(text):
    """'8', '8B', '4KiB', '1MiB', '64MiB' (also KB/MB as powers of 1024) -> bytes."""
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
             "MIB": 1024 ** 2, "G": 1024 ** 3, "GB": 1024 ** 3, "GIB": 1024 ** 3}
    s = text.strip().upper()
    digits = s.rstrip("KMGIB")
    unit = s[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 8, 4KiB, 1MiB)") from None
    if unit not in units or value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 8, 4KiB, 1MiB)")
    return int(value * units[unit])
