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

``in_flight``: how many buckets' rings travel at once (``mpipar.collectives.ring_driver``).
One ring after another leaves each of a small bucket's 2(p - 1) latency-bound steps to
wait alone; with several started their waits overlap, as DDP's asynchronous all-reduces
do (Li et al. 2020, sec. 3.2). Rings start in bucket order, at most ``in_flight``
unfinished, on every rank; which finishes first does not matter (one tag per bucket), and
the bits do not change.
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
from ..collectives.ring_driver import RingDriver

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
    grad)``; a bucket's ``RingAllreduce`` (tag ``first_tag`` + bucket index; another set of
    buckets in flight at the same time on ``comm`` needs other tags) starts when its last
    gradient is ready, ``progress()`` moves them on, ``finish()`` waits for all.
    ``overlap="none"`` (or False) is the baseline: nothing moves before ``finish()``, which
    runs a blocking ``collectives.allreduce(..., "ring")`` per bucket -- the same bits.
    ``overlap="thread"`` queues each ring on ``engine`` (one is started, and stopped by
    ``close()``, if none is given); ``poll_seconds`` is its thread's wait (None: inside
    ``MPI_Waitall``; a number: ``Testall`` and sleep, leaving the core to backward).
    ``in_flight``: the most buckets' rings unfinished at once, started in bucket order (None,
    the default: every complete bucket's at once, as DDP launches them; 1: one after
    another -- at p = 4 on 2 cores ``bench dp`` measured the thread's wait after backward
    955 ms with 1, 135 ms with 8, 81 ms with every one of 22 buckets).

    ``finish(average=True)`` divides by p: the mean of the replicas' gradients, which
    is the global batch's gradient only if every rank's shard has as many examples.
    With uneven shards scale each rank's loss gradient by its share of the global
    batch (n_rank / N) and sum with ``finish(average=False)``: exact for any split.
    Every rank must build the same buckets; the constructor checks with one small
    control message and raises the same ValueError on every rank if not.
    """

    def __init__(self, comm, shapes, bucket_bytes=25 * 2**20, dtype=np.float32, *,
                 overlap=True, check=True, engine=None, poll_seconds=None, in_flight=None,
                 first_tag=1):
        dtype, overlap = np.dtype(dtype), overlap_mode(overlap)
        items, problem = _layout(shapes, bucket_bytes, dtype, first_tag)
        if in_flight is not None and (isinstance(in_flight, bool) or
                                      not isinstance(in_flight, Integral) or in_flight < 1):
            problem = problem or f"in_flight must be a whole number >= 1 or None, not {in_flight!r}"
        if overlap == "thread" and engine is None:
            problem = problem or thread_level_problem("multiple")
        signature = (items, bucket_bytes, dtype.str, overlap, first_tag)
        if check and comm.Get_size() > 1:
            table = comm.allgather((problem, signature))
            problem = next((f"rank {r}: {pr}" for r, (pr, _) in enumerate(table) if pr), None)
            if not problem and any(sig != table[0][1] for _, sig in table):
                problem = "ranks disagree on the gradient shapes, bucket_bytes, dtype or overlap"
        if problem:
            raise ValueError(f"GradBuckets: {problem}")
        self.comm, self.dtype, self.overlap, self.bucket_bytes = comm, dtype, overlap, bucket_bytes
        self.poll_seconds, self._own_engine = poll_seconds, overlap == "thread" and engine is None
        self.in_flight = None if in_flight is None else int(in_flight)
        self.first_tag = first_tag
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
        self._driver = RingDriver(self.in_flight, self.poll_seconds)  # this step's rings
        self._job = None  # thread mode: the driver's run on the engine
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
            if self.overlap != "none":
                self._rings[b] = RingAllreduce(self.comm, self.buffers[b], tag=self.first_tag + b,
                                               inplace=True)
                self._driver.add(self._rings[b])
            if self.overlap == "poll":
                self._driver.pump()
            elif self.overlap == "thread" and self._job is None:
                self._job = self.engine.submit(self._driver.run, len(self.buckets),
                                               what="the buckets' all-reduces")

    def progress(self):
        """Advance every started bucket; True when every bucket is done."""
        if self.overlap == "poll":
            self._driver.pump()  # the engine's thread moves them in thread mode
        return all(ring is not None and ring.done for ring in self._rings)

    def finish(self, average=True):
        """Wait for every bucket (bucket order, the same on every rank), divide by p if
        ``average``, and return {name: gradient} -- views into the buckets."""
        missing = sorted(set().union(*self._missing))
        if missing or self._finished:
            raise RuntimeError(f"GradBuckets: finish() before these were ready: {missing}"
                               if missing else "GradBuckets: finish() twice without reset()")
        self._finished = True
        p = self.comm.Get_size()
        if self.overlap == "thread":
            self._job.wait()  # re-raises an error of the engine's thread
        elif self.overlap == "poll":
            self._driver.run(len(self.buckets))  # all in flight: wait on them together
        for b, buf in enumerate(self.buffers):
            if self.overlap != "none":
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
        if self._job is not None and not self._job.done:
            self._driver.cancel()  # a backward that never ended: let the engine stop
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


def _layout(shapes, bucket_bytes, dtype, first_tag=1):
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
    if isinstance(first_tag, bool) or not isinstance(first_tag, Integral) or first_tag < 1:
        return items, f"first_tag must be a whole number >= 1, not {first_tag!r}"
    if first_tag + len(items) > TAG:  # bucket b uses tag first_tag + b, below Channel's
        return items, f"too many gradients ({len(items)}) for one tag per bucket"
    return items, None
