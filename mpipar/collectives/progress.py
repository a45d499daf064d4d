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
engine's thread is asking for it, not while that thread waits inside MPI.

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

    def __init__(self, engine, what, fn, args, kwargs):
        self.engine, self.what = engine, what
        self._call = (fn, args, kwargs)
        self._done = threading.Event()
        self.result = self.error = None
        self.t_submit, self.t_start, self.t_end = time.perf_counter(), None, None

    done = property(lambda self: self._done.is_set())

    def wait(self):
        """Block until the job ran; its return value, or the engine's first error raised here."""
        self._done.wait()
        if self.error is not None:
            self.engine._claim()
            raise RuntimeError(self.engine.error_message) from self.error
        return self.result


class ProgressEngine:
    """One communication thread that runs submitted calls in order; see the module docstring.

        with ProgressEngine() as engine:
            job = engine.submit(RingAllreduce(comm, grad).start().wait, what="bucket 0")
            ...  # compute
            total = job.wait()

    ``abort_after``: seconds an error on the thread may go unclaimed by a ``wait`` before
    the engine aborts the MPI job (None: never). ``switch_interval``: Python's thread switch
    interval while the engine runs, in seconds (None: leave it as it is).
    """

    def __init__(self, level="multiple", abort_after=60.0, switch_interval=1e-4,
                 name="mpipar-progress"):
        problem = thread_level_problem(level) or (
            None if switch_interval is None or switch_interval > 0
            else f"switch_interval must be > 0 seconds or None, not {switch_interval!r}")
        if problem:
            raise ValueError(f"ProgressEngine: {problem}")
        self._interval = None
        if switch_interval is not None:
            self._interval = (sys.getswitchinterval(), switch_interval)
            sys.setswitchinterval(switch_interval)
        self.level, self.abort_after = level, abort_after
        self.rank = MPI.COMM_WORLD.Get_rank()
        self.error_message, self._error, self._claimed = None, None, threading.Event()
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._closer = weakref.finalize(self, _stop, self._queue, self._thread)
        atexit.register(self._closer)  # before mpi4py finalizes MPI (atexit runs last-in first)

    @property
    def alive(self):
        return self._thread.is_alive()

    def submit(self, fn, *args, what=None, **kwargs):
        """Queue ``fn(*args, **kwargs)`` on the engine's thread; returns its :class:`Job`."""
        if not self._closer.alive:
            raise RuntimeError("ProgressEngine: submit() after close()")
        job = Job(self, what or getattr(fn, "__qualname__", repr(fn)), fn, args, kwargs)
        self._queue.put(job)
        return job

    def close(self, timeout=30.0):
        """Let the queued jobs run, then stop the thread (waiting at most ``timeout`` s)."""
        if self._closer.alive:
            self._closer.detach()
            _stop(self._queue, self._thread, timeout)
            if self._interval and sys.getswitchinterval() == self._interval[1]:
                sys.setswitchinterval(self._interval[0])  # unless someone has changed it since

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _loop(self):
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self.error_message is None:
                job.t_start = time.perf_counter()
                fn, args, kwargs = job._call
                try:
                    job.result = fn(*args, **kwargs)
                except BaseException as e:  # noqa: B036 -- whatever it is, the main thread hears of it
                    job.error = e
                    self._fail(job, e)
                job.t_end = time.perf_counter()
            else:  # an earlier job failed: later ones report that error, never run
                job.error = self._error
            job._call = None
            job._done.set()

    def _fail(self, job, error):
        self._error = error
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.error_message = (f"progress engine (rank {self.rank}): {job.what} failed on the "
                              f"communication thread: {detail}")
        if self.abort_after is not None:
            watchdog = threading.Thread(target=self._abort_unless_claimed, daemon=True,
                                        name="mpipar-progress-abort")
            watchdog.start()

    def _claim(self):
        self._claimed.set()

    def _abort_unless_claimed(self):
        if self._claimed.wait(self.abort_after):
            return
        print(f"error: {self.error_message} (no wait() collected it within {self.abort_after:g} s: "
              "stopping every rank)", file=sys.stderr, flush=True)
        time.sleep(0.5)  # the launcher forwards the message before the abort tears the job down
        MPI.COMM_WORLD.Abort(1)


def _stop(jobs, thread, timeout=30.0):
    """Ask the thread to stop after the queued jobs; wait at most ``timeout`` seconds."""
    jobs.put(_STOP)
    if thread is not threading.current_thread():
        thread.join(timeout)
