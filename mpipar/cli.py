"""Command-line plumbing shared by the entry points: print once, fail once, never hang.

Every rank parses the same argv and validates the same inputs, so every rank
reaches the same verdict without sending a message. Only rank 0 speaks.

Here: :class:`Parser`, :func:`parse_checked`, :func:`run_main`, :func:`print0`, the option types
(:func:`parse_size`, :func:`comma_list`), :func:`json_path_problem` (ask before any
work) with :func:`write_json` (atomic, rank 0), and the one progress bar, :class:`Progress`.
"""
import argparse
import contextlib
import json
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
    so only its file system counts; its verdict is sent to every rank (control data).
    Call it while validating, before any work, so a typo costs nothing."""
    if not path:
        return None
    bad = None
    if comm.Get_rank() == 0:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            bad = f"cannot write --json {path!r}: it is a folder"
        elif not os.path.isdir(folder):
            bad = f"cannot write --json {path!r}: there is no folder {folder!r}"
        elif not os.access(folder, os.W_OK):
            bad = f"cannot write --json {path!r}: the folder {folder!r} is not writable"
    return comm.bcast(bad, root=0)


def write_json(comm, path, obj, default=None):
    """Rank 0 writes ``obj`` to ``path`` as JSON; other ranks, or no path, do nothing.

    Atomic: the text goes to a temporary file in the same folder, which then replaces
    ``path`` (``os.replace``), so a crash never leaves a half-written result where a
    notebook expects one. No message is sent (``obj`` may exist on rank 0 only).
    ``default`` is json.dump's: text for what JSON cannot hold (NumPy scalars, say).
    Returns True where a file was written.
    """
    if not path or comm.Get_rank() != 0:
        return False
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as f:
            json.dump(obj, f, indent=1, default=default)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return True


class Progress:
    """The progress bar of every entry point: tqdm on stderr if installed, else one line
    on stderr per stage; nothing when ``quiet`` or on ranks other than 0.

        progress = Progress(comm, total=len(cases), quiet=args.quiet, unit="case")
        progress.start("measuring allreduce", "allreduce ring 4 KiB")  # stage, what exactly
        progress.update(loss="0.251")  # one unit done; keywords show beside the bar
        progress.write(table)          # rank 0's stdout, without tearing the bar
        progress.close()
    """

    def __init__(self, comm, total, quiet=False, unit="step"):
        self.rank0 = comm.Get_rank() == 0
        self.enabled = self.rank0 and not quiet
        self.bar, self.stage = None, None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, file=sys.stderr, unit=unit, leave=False)

    def start(self, stage, label=None):
        """Say what is being done now: the bar shows ``label`` (or ``stage``); without
        tqdm a line names each new ``stage``."""
        if self.bar is not None:
            self.bar.set_description(label or stage)
        elif self.enabled and stage != self.stage:
            print(f"{stage} ...", file=sys.stderr, flush=True)
        self.stage = stage

    def update(self, **postfix):
        """One unit done; ``postfix`` (name=text) is shown beside the bar."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def write(self, text):
        """print() on rank 0 (quiet or not), with the bar out of the way."""
        if not self.rank0:
            return
        if self.bar is not None:
            self.bar.clear()
        print(text, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def parse_checked(parser, argv, check):
    """(args, MPI.COMM_WORLD): ``argv`` parsed, then ``check(args, comm)`` -- a problem or
    None, the same on every rank -- turned into the parser's usage error before any work."""
    args = parser.parse_args(argv)
    comm = world()
    problem = check(args, comm)
    if problem:
        parser.error(problem)
    return args, comm


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
