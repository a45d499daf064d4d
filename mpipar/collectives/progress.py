"""A progress engine: one communication thread per rank runs queued collectives while the
main thread computes.

Why a thread: an MPI library moves a message only while some call is inside it (MPICH
and Open MPI have no progress thread by default), so a ring started before backward
stalls whenever its rank is multiplying matrices. NumPy's matrix products and large
ufuncs release Python's GIL, and mpi4py releases it inside every MPI call, so a second
thread can sit in ``MPI_Waitall`` -- and post each ring step the moment the last one
has arrived -- while the first thread computes: what NCCL's streams and MPI progress
threads do (Hoefler & Lumsdaine 2008, "Message progression in parallel computing -- to
thread or not to thread?").

The thread level, checked when an engine starts (``MPI.Query_thread()``):

* ``MPI_THREAD_MULTIPLE``: any thread may call MPI at any time. Needed when the main
  thread keeps communicating while jobs run (tensor-parallel all-reduces in backward,
  even building a ring's ``Channel``): the default, and what ``GradBuckets`` asks for.
* ``MPI_THREAD_SERIALIZED``: threads may call MPI, never two at once. Enough only if
  the main thread makes no MPI call between ``submit`` and the job's ``wait``: all the
  overlapped work's messages on the engine's thread. Pass ``level="serialized"`` to
  promise that; nothing checks the promise.
* ``SINGLE`` / ``FUNNELED``: only the main thread may call MPI. The engine refuses to
  start (a ValueError that says so); overlap by polling instead (``GradBuckets``
  ``overlap="poll"``).

mpi4py asks for ``MULTIPLE`` by default (``mpi4py.rc.thread_level``); the pip ``mpich``
wheel and Open MPI 4.1 both provide it. Which the library gave is in ``thread_level()``.

A job's result keeps its bits: the job is the same function the main thread would call
(e.g. ``RingAllreduce(...).wait``), only on another thread. Jobs run one at a time in
submission order, so every rank runs its collectives in the same order.

Errors: an exception on the engine's thread is kept and re-raised on the main thread by
the next ``wait`` (of that job or any later one) as one RuntimeError naming the rank and
the job; jobs queued after it are not run (their peers may already have gone). Under
``python -m mpi4py`` that uncaught error aborts the whole job. If no ``wait`` claims the
error within ``abort_after`` seconds (the main thread stuck in a message that will never
come), the engine prints it and aborts the job itself: a failure never hangs.

The GIL: the engine's thread needs Python's lock for the few lines between two MPI calls
(combine a block, post the next step). While the main thread runs Python code it gets the
lock only when the main thread is made to drop it, after ``sys.getswitchinterval()``
(5 ms by default) -- for every ring step, which would leave the rings a step per 5 ms. An
engine therefore lowers the interval to ``switch_interval`` (0.1 ms) while it runs and
restores it on ``close()``; the main thread gives the lock up more often only while the
engine's thread is asking for it, not while that thread waits inside MPI. (For GPT-2 small,
whose main thread spends most of backward in NumPy with the lock released, 0.1 ms and 5 ms
measured alike: ``bench dp`` at p = 8 on 16 cores, 4.17 s and 3.96 s steps, within the
spread of repeated runs.)

Cores: the thread spins inside ``MPI_Waitall``, so it needs a core besides the one its rank
computes on (Open MPI: ``mpirun --map-by slot:PE=2 --bind-to core``). Where ranks fill the
machine it takes turns with backward (p = 16 on 16 cores: forward + backward 1.49 s -> 1.98 s,
no step saved). ``RingAllreduce.wait(poll_seconds)`` tests and sleeps instead.

Shutdown: ``close()`` (or the ``with`` block, or interpreter exit) lets the queued jobs
finish, then stops the thread; it is a daemon, so a thread stuck in MPI never keeps the
process alive.
"""
import atexit
import queue
import sys
import threading
import time
import traceback
import weakref

from mpi4py import MPI

__all__ = ["ProgressEngine", "Job", "thread_level", "thread_level_problem"]

LEVELS = {"single": MPI.THREAD_SINGLE, "funneled": MPI.THREAD_FUNNELED,
          "serialized": MPI.THREAD_SERIALIZED, "multiple": MPI.THREAD_MULTIPLE}
_STOP = object()


def thread_level():
    """The thread level this MPI library provides, by name ("multiple", "serialized", ...)."""
    provided = MPI.Query_thread()
    return next(name for name, value in LEVELS.items() if value == provided)


def thread_level_problem(level="multiple"):
    """None if MPI provides ``level`` or more, else why a communication thread may not run."""
    if level not in ("serialized", "multiple"):
        return f"level must be 'serialized' or 'multiple', not {level!r}"
    have = thread_level()
    if LEVELS[have] >= LEVELS[level]:
        return None
    return (f"a communication thread needs MPI_THREAD_{level.upper()}, but this MPI provides "
            f"MPI_THREAD_{have.upper()} (mpi4py.rc.thread_level, set before importing "
            "mpi4py.MPI, asks for the level); overlap by polling instead")


class Job:
    """One queued call: ``done`` without blocking, ``wait()`` for its result.

    ``t_start`` / ``t_end``: perf_counter() when the engine's thread began and ended it."""

    def __init__(self, worker, what, fn, args, kwargs):
        self._worker, self.what = worker, what
        self._call = (fn, args, kwargs)
        self._done = threading.Event()
        self.result = self.error = None
        self.t_submit, self.t_start, self.t_end = time.perf_counter(), None, None

    done = property(lambda self: self._done.is_set())

    def wait(self):
        """Block until the job ran; its return value, or the engine's first error raised here."""
        self._done.wait()
        if self.error is not None:
            self._worker.claimed.set()
            raise RuntimeError(self._worker.error_message) from self.error
        return self.result


class ProgressEngine:
    """One communication thread that runs submitted calls in order; see the module docstring.

        with ProgressEngine() as engine:
            job = engine.submit(RingAllreduce(comm, grad).start().wait, what="bucket 0")
            ...  # compute
            total = job.wait()

    ``abort_after``: seconds an error on the thread may go unclaimed by a ``wait`` before
    the engine aborts the MPI job (None: never). ``switch_interval``: Python's thread switch
    interval while the engine runs, in seconds (None: leave it as it is). The thread stops
    at ``close()``, at interpreter exit, or when the engine is garbage-collected.
    """

    def __init__(self, level="multiple", abort_after=60.0, switch_interval=1e-4,
                 name="mpipar-progress"):
        problem = thread_level_problem(level) or (
            None if switch_interval is None or switch_interval > 0
            else f"switch_interval must be > 0 seconds or None, not {switch_interval!r}")
        if problem:
            raise ValueError(f"ProgressEngine: {problem}")
        self.level, self.abort_after = level, abort_after
        interval = None
        if switch_interval is not None:
            old = sys.getswitchinterval()
            sys.setswitchinterval(switch_interval)
            interval = (old, sys.getswitchinterval())  # as Python rounded it (microseconds)
        self._worker = _Worker(MPI.COMM_WORLD.Get_rank(), abort_after)
        self._thread = threading.Thread(target=self._worker.serve, name=name, daemon=True)
        self._thread.start()
        # the thread holds the worker, not the engine, so an engine nobody holds is collected
        self._closer = weakref.finalize(self, _stop, self._worker, self._thread, interval)
        atexit.register(self._closer)  # before mpi4py finalizes MPI (atexit runs last-in first)

    @property
    def alive(self):
        return self._thread.is_alive()

    @property
    def error_message(self):
        """The first error of the engine's thread, as ``wait()`` raises it (None: no error)."""
        return self._worker.error_message

    def submit(self, fn, *args, what=None, **kwargs):
        """Queue ``fn(*args, **kwargs)`` on the engine's thread; returns its :class:`Job`."""
        if not self._closer.alive:
            raise RuntimeError("ProgressEngine: submit() after close()")
        job = Job(self._worker, what or getattr(fn, "__qualname__", repr(fn)), fn, args, kwargs)
        self._worker.jobs.put(job)
        return job

    def close(self, timeout=30.0):
        """Let the queued jobs run, then stop the thread (waiting at most ``timeout`` s)."""
        if self._closer.alive:
            _, _, args, _ = self._closer.detach()
            _stop(*args, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Worker:
    """What the engine's thread runs and knows: the queue, and the first error."""

    def __init__(self, rank, abort_after):
        self.rank, self.abort_after = rank, abort_after
        self.jobs = queue.SimpleQueue()
        self.error = self.error_message = None
        self.claimed = threading.Event()

    def serve(self):
        while True:
            job = self.jobs.get()
            if job is _STOP:
                return
            if self.error is None:
                job.t_start = time.perf_counter()
                fn, args, kwargs = job._call
                try:
                    job.result = fn(*args, **kwargs)
                except BaseException as e:  # noqa: B036 -- whatever it is, the main thread hears of it
                    job.error = e
                    self._fail(job, e)
                job.t_end = time.perf_counter()
            else:  # an earlier job failed: later ones report that error, never run
                job.error = self.error
            job._call = None
            job._done.set()

    def _fail(self, job, error):
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.error_message = (f"progress engine (rank {self.rank}): {job.what} failed on the "
                              f"communication thread: {detail}")
        self.error = error
        if self.abort_after is not None:
            threading.Thread(target=self._abort_unless_claimed, daemon=True,
                             name="mpipar-progress-abort").start()

    def _abort_unless_claimed(self):
        if self.claimed.wait(self.abort_after):
            return
        print(f"error: {self.error_message} (no wait() collected it within {self.abort_after:g} s: "
              "stopping every rank)", file=sys.stderr, flush=True)
        time.sleep(0.5)  # the launcher forwards the message before the abort tears the job down
        MPI.COMM_WORLD.Abort(1)


def _stop(worker, thread, interval, timeout=30.0):
    """Ask the thread to stop after the queued jobs, wait at most ``timeout`` seconds, and put
    Python's switch interval back (unless someone has changed it since)."""
    worker.jobs.put(_STOP)
    if thread is not threading.current_thread():
        thread.join(timeout)
    if interval and sys.getswitchinterval() == interval[1]:
        sys.setswitchinterval(interval[0])
