"""The asynchronous column-parallel backward: the input gradient's reduction on a communication
thread while the weight gradients are computed.

A column-parallel layer's backward (``linear.column_parallel_backward``) has three products
per shard: the input-gradient part dy_k W_k^T, the weight gradient x^T dy_k and the bias
gradient sum dy_k. Only the first needs communication -- the parts are summed over the
group, f's backward (an all-reduce; with sequence parallelism a reduce-scatter) -- and
the weight gradient does not need that sum. So the parts are computed first, their
reduction starts, and the weight gradients are computed while it travels. The layers are
Megatron-LM's (Shoeybi et al. 2019, sec. 3); the overlap is the one its code base (Narayanan
et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM") does in the column-parallel linear layer's backward
(``LinearWithGradAccumulationAndAsyncCommunication``): the input gradient's all-reduce is
launched asynchronously and the weight gradient's product computed in the meantime, on
another CUDA stream. Here the reduction runs as a job on a
:class:`~mpipar.collectives.progress.ProgressEngine`, whose thread sits inside MPI while
NumPy's matrix product -- which releases Python's lock -- runs on the main thread.

Why the bits do not change: the job is the very function the synchronous path calls
(``TPGroup.copy_to_tp_backward`` or ``gather_from_sp_backward``, with the group's algorithm,
comm dtype and deterministic order) on the same arrays; only the thread differs. The weight
gradients are the same products as before, merely computed later, each on its own. So a
backward with ``tp.engine`` set and one without are bitwise equal, in deterministic mode and
out of it.

Messages: at most one such job is in flight per group, and while it is the main thread makes
no call on the group's communicator (it only multiplies; the next collective on ``tp.comm``
comes after ``wait()``). Every rank of the group submits its jobs in the same order -- the
layers in reverse -- and an engine runs its jobs in order, so the ranks meet in the same
collectives. Other threads may call MPI on other communicators meanwhile (data parallelism's
bucket thread), which MPI_THREAD_MULTIPLE allows; the engine checks the level when it starts.

What is measured: a job's own seconds (``Job.t_start``..``t_end``), and how long the main
thread waited for it; the ledger records the collective from the engine's thread as it would
from the main one, and an ``OpProfile`` counts only the thread that opened it (so no second
is counted twice: the main thread's wait falls into its "other"). Set ``tp.timings`` to a
list to collect one :func:`timing` dict per reduction; None (the default) collects nothing.
With the weight gradients deferred (``DeferredGrads``, the zero-bubble split) there is
nothing to overlap, and the reduction runs at once on the main thread.
"""
import time

__all__ = ["Finished", "Started", "start", "timing"]


class Finished:
    """A reduction already done on the main thread: ``wait()`` returns its value."""

    done = True

    def __init__(self, value, seconds):
        self.value, self.seconds, self.waited = value, seconds, seconds

    def wait(self):
        return self.value


class Started:
    """A reduction running on the engine's thread: ``wait()`` blocks until it ran and returns
    its value (or re-raises the thread's error, naming the rank and the layer)."""

    def __init__(self, job):
        self.job, self.waited = job, None

    @property
    def done(self):
        return self.job.done

    @property
    def seconds(self):
        """The job's own seconds on the engine's thread (None until it ran)."""
        job = self.job
        return None if job.t_end is None else job.t_end - job.t_start

    def wait(self):
        t0 = time.perf_counter()
        try:
            return self.job.wait()
        finally:
            self.waited = time.perf_counter() - t0


def timing(what, handle):
    """One reduction's record: the layer, whether it ran on the engine's thread, its own
    seconds and the seconds the main thread waited for it (equal when synchronous)."""
    return dict(what=what, overlapped=isinstance(handle, Started), seconds=handle.seconds,
                waited=handle.waited)


class _Waited:
    """A handle whose ``wait()`` also appends the reduction's :func:`timing` to ``log``."""

    def __init__(self, handle, what, log):
        self.handle, self.what, self.log = handle, what, log

    done = property(lambda self: self.handle.done)

    def wait(self):
        try:
            return self.handle.wait()
        finally:
            self.log.append(timing(self.what, self.handle))


def start(tp, fn, parts, what, overlap=True):
    """``fn(parts)`` (a reduction of the group ``tp``): on ``tp.engine``'s thread if the
    group runs its backward asynchronously and ``overlap``, else now. Returns a handle
    whose ``wait()`` gives the result."""
    if overlap and tp.async_backward:
        handle = Started(tp.engine.submit(fn, parts, what=f"{what}'s input-gradient reduction"))
    else:
        t0 = time.perf_counter()
        value = fn(parts)
        handle = Finished(value, time.perf_counter() - t0)
    return handle if tp.timings is None else _Waited(handle, what, tp.timings)
