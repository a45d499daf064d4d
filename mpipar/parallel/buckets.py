"""Overlapping gradient averaging with the backward pass: gradient buckets, each all-reduced
by the non-blocking ring of ``mpipar.collectives.nonblocking`` as soon as it is complete.

PyTorch DDP (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating
Data Parallel Training", sec. 3.2) puts gradients into buckets (25 MB by default)
in the order backward produces them -- last layer first -- and starts a bucket's
all-reduce as soon as its last gradient is ready: the communication of late
layers hides behind the computation of early ones.

The honest picture here: Python runs one thread and MPI libraries (MPICH by
default included) have no progress thread, so messages advance only while some
call is inside MPI. Backward calls ``progress()`` between layers; each call tests
the outstanding requests and, when a step's messages have arrived, combines and
posts the next step. Small messages travel eagerly between polls; large ones
(rendezvous) wait for both sides to poll. How much hides depends on how often
backward polls: measure it with ``timeline()`` against ``overlap="none"``.

``overlap="thread"`` hands each finished bucket's ring to a communication thread
(``mpipar.collectives.progress.ProgressEngine``), which waits inside MPI and posts each
step as soon as the last has arrived while backward computes: the buckets travel
during backward, not only at its polls. It needs MPI_THREAD_MULTIPLE. The three modes
run the same ring, in the same bucket order, so their results have the same bits.
"""
import math
from numbers import Integral
from operator import index
import time

import numpy as np

from ..collectives import DTYPES, allreduce
from ..collectives.channel import TAG
from ..collectives.nonblocking import RingAllreduce
from ..collectives.progress import ProgressEngine, thread_level_problem

__all__ = ["GradBuckets", "MODES", "overlap_mode"]

MODES = ("none", "poll", "thread")  #: after backward; started and polled; on a thread


def overlap_mode(overlap):
    """"none", "poll" or "thread"; ``True`` / ``False`` (the older spelling) are "poll" / "none"."""
    if overlap is True or overlap is False:
        return "poll" if overlap else "none"
    if overlap not in MODES:
        raise ValueError(f"overlap must be one of {', '.join(MODES)}, not {overlap!r}")
    return overlap


class GradBuckets:
    """Gradients in flat buckets, each all-reduced over ``comm`` as soon as it is complete.

    ``shapes``: (name, shape) pairs or a dict, in the order backward produces them
    (last layer first). A bucket is closed when the next gradient would take it over
    ``bucket_bytes``; a gradient larger than that gets a bucket of its own. Backward
    writes a gradient into ``view(name)`` (no copy) or passes it to ``ready(name,
    grad)``; a bucket's ``RingAllreduce`` (tag 1 + bucket index) starts when its last
    gradient is ready, ``progress()`` moves them on, ``finish()`` waits for all.
    ``overlap="none"`` (or False) is the baseline: nothing moves before ``finish()``, which
    runs a blocking ``collectives.allreduce(..., "ring")`` per bucket -- the same bits.
    ``overlap="thread"`` queues each ring on ``engine`` (one is started, and stopped by
    ``close()``, if none is given); ``poll_seconds`` is its thread's wait (None: inside
    ``MPI_Waitall``; a number: ``Testall`` and sleep, leaving the core to backward).

    ``finish(average=True)`` divides by p: the mean of the replicas' gradients, which
    is the global batch's gradient only if every rank's shard has as many examples.
    With uneven shards scale each rank's loss gradient by its share of the global
    batch (n_rank / N) and sum with ``finish(average=False)``: exact for any split.
    Every rank must build the same buckets; the constructor checks with one small
    control message and raises the same ValueError on every rank if not.
    """

    def __init__(self, comm, shapes, bucket_bytes=25 * 2**20, dtype=np.float32, *,
                 overlap=True, check=True, engine=None, poll_seconds=None):
        dtype, overlap = np.dtype(dtype), overlap_mode(overlap)
        items, problem = _layout(shapes, bucket_bytes, dtype)
        if overlap == "thread" and engine is None:
            problem = problem or thread_level_problem("multiple")
        signature = (items, bucket_bytes, dtype.str, overlap)
        if check and comm.Get_size() > 1:
            table = comm.allgather((problem, signature))
            problem = next((f"rank {r}: {pr}" for r, (pr, _) in enumerate(table) if pr), None)
            if not problem and any(sig != table[0][1] for _, sig in table):
                problem = "ranks disagree on the gradient shapes, bucket_bytes, dtype or overlap"
        if problem:
            raise ValueError(f"GradBuckets: {problem}")
        self.comm, self.dtype, self.overlap, self.bucket_bytes = comm, dtype, overlap, bucket_bytes
        self.poll_seconds, self._own_engine = poll_seconds, overlap == "thread" and engine is None
        self.engine = ProgressEngine() if self._own_engine else engine
        self.buckets = []  #: list of lists of names, one per bucket, in ready order
        self._where, sizes = {}, []  # name -> (bucket, offset, count, shape); bucket lengths
        for name, shape in items:
            n = math.prod(shape)
            if not sizes or (sizes[-1] + n) * dtype.itemsize > bucket_bytes:
                self.buckets.append([])
                sizes.append(0)
            self.buckets[-1].append(name)
            self._where[name] = (len(sizes) - 1, sizes[-1], n, shape)
            sizes[-1] += n
        self.buffers = [np.zeros(n, dtype) for n in sizes]  #: one flat buffer per bucket
        self.reset()

    def reset(self, zero=False):
        """Get ready for the next backward pass (``zero``: clear the buffers too)."""
        if any(r is not None and not r.done for r in getattr(self, "_rings", ())):
            raise RuntimeError("GradBuckets: reset() while buckets are in flight; finish() first")
        self._missing = [set(names) for names in self.buckets]
        self._rings = [None] * len(self.buckets)
        self._jobs = [None] * len(self.buckets)  # thread mode: each ring's job on the engine
        self._times = [dict(ready=None, start=None, end=None) for _ in self.buckets]
        self._finished = False
        if zero:
            for buf in self.buffers:
                buf[...] = 0

    def view(self, name):
        """The gradient's place in its bucket, shaped like the gradient: write it there."""
        b, offset, n, shape = self._where[name]
        return self.buffers[b][offset:offset + n].reshape(shape)

    def bucket_of(self, name):
        return self._where[name][0]

    def ready(self, name, grad=None):
        """Mark ``name`` computed (copying ``grad`` into its view if given); a bucket
        whose last gradient this is starts its all-reduce (``overlap=True``)."""
        if name not in self._where:
            raise KeyError(f"GradBuckets: no gradient named {name!r}")
        b = self._where[name][0]
        if name not in self._missing[b]:
            raise ValueError(f"GradBuckets: {name!r} was already marked ready in this step")
        if grad is not None:
            view = self.view(name)
            if np.shape(grad) != view.shape:
                raise ValueError(f"GradBuckets: {name!r} has shape {view.shape}, "
                                 f"not {np.shape(grad)}")
            view[...] = grad
        self._missing[b].discard(name)
        if not self._missing[b]:
            self._times[b]["ready"] = time.perf_counter()
            if self.overlap == "poll":
                self._rings[b] = RingAllreduce(self.comm, self.buffers[b], tag=1 + b,
                                               inplace=True).start()
                self._times[b]["start"] = self._rings[b].t_start
            elif self.overlap == "thread":
                self._rings[b] = ring = RingAllreduce(self.comm, self.buffers[b], tag=1 + b,
                                                      inplace=True)
                self._jobs[b] = self.engine.submit(_run_ring, ring, self.poll_seconds,
                                                   what=f"bucket {b}'s all-reduce")

    def progress(self):
        """Advance every started bucket; True when every bucket is done."""
        if self.overlap == "thread":  # the engine moves them; nothing to call here
            return all(job is not None and job.done for job in self._jobs)
        done = True
        for ring in self._rings:
            done = (ring is not None and ring.progress()) and done
        return done

    def finish(self, average=True):
        """Wait for every bucket (bucket order, the same on every rank), divide by p if
        ``average``, and return {name: gradient} -- views into the buckets."""
        missing = sorted(set().union(*self._missing))
        if missing or self._finished:
            raise RuntimeError(f"GradBuckets: finish() before these were ready: {missing}"
                               if missing else "GradBuckets: finish() twice without reset()")
        self._finished = True
        p = self.comm.Get_size()
        for b, buf in enumerate(self.buffers):
            if self.overlap == "thread":
                self._jobs[b].wait()  # re-raises an error of the engine's thread
            if self.overlap != "none":
                self._rings[b].wait()
                self._times[b]["start"] = self._rings[b].t_start
                self._times[b]["end"] = self._rings[b].t_end
            else:
                self._times[b]["start"] = time.perf_counter()
                buf[...] = allreduce(self.comm, buf, "sum", "ring", check=False)
                self._times[b]["end"] = time.perf_counter()
            if average:
                buf /= buf.dtype.type(p)
        return {name: self.view(name) for names in self.buckets for name in names}

    def close(self):
        """Stop the communication thread this object started (thread mode), if any."""
        if self._own_engine:
            self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def timeline(self, t0=0.0):
        """One dict per bucket: bucket, nbytes, names, and the ready/start/end times
        relative to ``t0`` (e.g. perf_counter() when backward began); None if not yet."""
        rel = lambda t: None if t is None else t - t0  # noqa: E731
        return [dict(bucket=b, nbytes=int(buf.nbytes), names=list(names),
                     **{k: rel(v) for k, v in times.items()})
                for b, (buf, names, times) in enumerate(zip(self.buffers, self.buckets, self._times))]


def _run_ring(ring, poll_seconds):
    """The engine's job for one bucket: the whole ring, start to end, on its thread."""
    ring.start()
    ring.wait(poll_seconds)


def _layout(shapes, bucket_bytes, dtype):
    """(name, shape tuple) pairs, and what is wrong with the layout on this rank or None."""
    items = list(shapes.items() if isinstance(shapes, dict) else shapes)
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, Integral) or bucket_bytes < 1:
        return items, f"bucket_bytes must be a whole number >= 1, not {bucket_bytes!r}"
    if dtype not in DTYPES or dtype.kind not in "fV":  # V: bfloat16
        return items, f"dtype {dtype} is not a supported floating-point type"
    try:
        items = [(n, (s,) if isinstance(s, Integral) else tuple(map(index, s))) for n, s in items]
    except (TypeError, ValueError) as e:
        return items, f"a shape is not a tuple of whole numbers ({e})"
    if any(d < 0 for _, s in items for d in s):
        return items, "a shape has a negative dimension"
    if len({n for n, _ in items}) != len(items):
        return items, "gradient names must be unique"
    if len(items) >= TAG - 1:  # bucket b uses tag 1 + b, below Channel's
        return items, f"too many gradients ({len(items)}) for one tag per bucket"
    return items, None
