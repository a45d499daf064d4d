"""Command-line plumbing shared by the entry points: print once, fail once, never hang.

Every rank parses the same argv and validates the same inputs, so every rank
reaches the same verdict without sending a message. Only rank 0 speaks.

Here: :class:`Parser`, :func:`parse_checked`, :func:`run_main`, :func:`print0`, the option types
(:func:`parse_size`, :func:`comma_list`), :func:`json_path_problem` (ask before any
work) with :func:`write_json` (atomic, rank 0, always valid JSON), :func:`fail_together` (a problem
one rank alone can see, raised on all), :func:`watchdog` (``--timeout``), and the one
progress bar, :class:`Progress`.
"""
import argparse
import contextlib
import json
import math
import os
import re
import sys
import threading
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

    def add_timeout(self):
        """The ``--timeout SECONDS`` option that :func:`watchdog` enforces."""
        self.add_argument("--timeout", type=float, metavar="SECONDS",
                          help="stop the whole job with an error if it runs longer than this "
                               "(a rank stopped or stuck never leaves the others waiting forever)")


def watchdog(comm, seconds):
    """Abort the job ``seconds`` from now unless the process has ended (None: no limit).

    Each rank runs a daemon timer; rank 0's prints the error and aborts at once, the others a
    second later (rank 0 may be the one that is stuck) with their rank named."""
    if seconds is None:
        return None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"--timeout must be a number of seconds > 0, not {seconds}")
    rank = comm.Get_rank()

    def fire():
        if rank != 0:
            time.sleep(1.0)
        who = "" if rank == 0 else f" (rank {rank})"
        print(f"error{who}: --timeout {seconds:g} s exceeded: stopping every rank", file=sys.stderr,
              flush=True)
        time.sleep(0.5)  # the launcher forwards the message before the abort tears the job down
        comm.Abort(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def fail_together(comm, build):
    """``build()`` on every rank of ``comm``; if it raises ValueError on any rank, raise one on
    every rank: a problem only some ranks can see (a NaN in the slice of a file one rank reads)
    still ends the job with one clear error. ``build`` must send no message."""
    try:
        result, problem = build(), None
    except ValueError as e:
        result, problem = None, str(e)
    problems = comm.allgather(problem)  # small control data
    failed = [(r, text) for r, text in enumerate(problems) if text]
    if failed:
        rank, text = failed[0]
        if len(failed) < len(problems):
            text = f"{text} (on rank {rank})"
        raise ValueError(text)
    return result


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
    ``default`` is json.dump's: text for what JSON cannot hold (NumPy arrays and scalars
    are converted without one). The file is always valid JSON: NaN and infinities, which
    JSON has no words for, are written as null.
    Returns True where a file was written.
    """
    if not path or comm.Get_rank() != 0:
        return False
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    try:
        def convert(x):
            if hasattr(x, "tolist"):  # NumPy arrays and scalars
                return finite_json(x.tolist())
            if default is None:
                raise TypeError(f"{type(x).__name__} is not JSON serializable")
            return finite_json(default(x))

        with open(temporary, "w") as f:
            json.dump(finite_json(obj), f, indent=1, default=convert, allow_nan=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return True


def finite_json(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON's null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


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


def run_main(main, argv=None, grace_seconds=10.0, alone_seconds=2.0):
    """Run ``main(argv)`` (it returns an exit status) and end the job cleanly.

    A usage error (argparse's SystemExit) or a ValueError -- raised identically
    on every rank, since inputs are validated before any message is sent --
    becomes one message from rank 0 and exit status 2 on every rank. Ranks meet
    at a barrier first, so rank 0's message is out before anyone leaves, then
    finalize MPI (under ``python -m mpi4py`` a bare non-zero exit would be an
    MPI_Abort). A rank that failed while the others did not (they never reach the
    barrier) prints its own message, its rank named, after ``alone_seconds``, and the
    job is aborted after ``grace_seconds`` rather than left hanging. Any other
    exception propagates: ``python -m mpi4py`` aborts the job.
    """
    from mpi4py import MPI
    comm, message = MPI.COMM_WORLD, None
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except ValueError as error:
        message, status = f"error: {error}", 2
        print0(comm, message, file=sys.stderr)
    status = status or 0
    if status:
        sys.stdout.flush()
        sys.stderr.flush()
        barrier = comm.Ibarrier()
        start = time.monotonic()
        spoken = comm.Get_rank() == 0 or message is None
        while not barrier.Test():
            waited = time.monotonic() - start
            if not spoken and waited > alone_seconds:
                print(f"error (rank {comm.Get_rank()}): {message[len('error: '):]}", file=sys.stderr,
                      flush=True)
                spoken = True
            if waited > grace_seconds:
                comm.Abort(status)
            time.sleep(1e-3)
        MPI.Finalize()
    sys.exit(status)
