"""A non-blocking ring allreduce: started, advanced by polling, finished later.

The steps, block split and every combine are those of the blocking ring
(``mpipar.collectives.allreduce.ring``; the same ``blocks.ring_step``), so the
result has the same bits.
Messages advance only while some call is inside MPI: the caller polls with
``progress()`` between pieces of work (see ``mpipar.parallel.buckets``), or a
communication thread drives it with ``wait()`` (``mpipar.collectives.progress``).
"""
import time

from mpi4py import MPI
import numpy as np

from ..measure import ledger
from . import DTYPES
from .blocks import REDUCTIONS, block, combine, ring_step, split_offsets
from .channel import TAG, Channel

__all__ = ["PolledRing", "RingAllreduce"]

DEFAULT_TAG = TAG + 1  # not Channel's: a blocking collective in flight meanwhile cannot match


class PolledRing:
    """What every polled ring shares: ``start()``, ``progress()``, ``wait()``, the clock and the
    ledger's record. A ring calls ``_begin(comm, tag)`` in its ``__init__`` (after setting
    ``buf``) and defines ``_post()`` -- post step ``self._step``'s messages, or ``_finish()``
    when none is left -- and ``_combine()``: this step's messages have arrived, add what
    came in (if anything). ``OP`` names the collective in the ledger."""

    OP = None

    def _begin(self, comm, tag):
        self.ch = Channel(comm, trace=ledger.tracing(), tag=tag)
        self._step, self._requests = 0, []
        self.t_start = self.t_end = None  #: perf_counter() at start() and when done was seen

    started = property(lambda self: self.t_start is not None)
    done = property(lambda self: self.t_end is not None)
    pending = property(lambda self: self._requests,
                       doc="this step's requests (a driver waits on several rings' together)")

    def start(self):
        """Post the first step's messages (or finish at once on one rank)."""
        if self.started:
            raise RuntimeError(f"{type(self).__name__}: already started")
        self.t_start = time.perf_counter()
        self._post()
        return self

    def _advance(self):
        """This step's messages have arrived: combine, then post the next step."""
        self._combine()
        self._step += 1
        self._post()

    def progress(self):
        """Test the outstanding requests; advance as far as arrived messages allow. True when done."""
        if not self.started:
            raise RuntimeError(f"{type(self).__name__}: progress() before start()")
        while not self.done and MPI.Request.Testall(self._requests):
            self._advance()
        return self.done

    def wait(self, poll_seconds=None):
        """Drive the ring to the end and return the result: per step one ``Waitall`` (which
        spins inside MPI), or with ``poll_seconds`` a ``Testall`` every that many seconds,
        sleeping between -- a communication thread that leaves its core to the computation."""
        if not self.started:
            self.start()
        while not self.done:
            if poll_seconds is None:
                MPI.Request.Waitall(self._requests)
            else:
                while not MPI.Request.Testall(self._requests):
                    time.sleep(poll_seconds)
            self._advance()
        return self.result

    def _finish(self):
        self.t_end = time.perf_counter()
        self._requests = []
        if ledger.recording():  # seconds: start to finish, including the work between polls
            ledger.record_call(self.ch, self.OP, "ring", self.buf.dtype, self.buf.size,
                               self.buf.nbytes, self.t_end - self.t_start, nonblocking=True)


class RingAllreduce(PolledRing):
    """Non-blocking ring allreduce of ``x`` on ``comm``: ``start()``, then ``progress()``
    until it returns True, or ``wait()``. The result is ``.result``.

    Steps, block split and every ``combine`` are those of ``allreduce.ring``
    (p-1 reduce-scatter steps, p-1 allgather steps, one message each way per step),
    so the result is bitwise equal to ``collectives.allreduce(comm, x, op, "ring")``.
    Ranks agree without a "lower rank first" rule: block b is reduced along the ring
    (starting at rank b+1, each rank adding its own data on the right of the partial
    it received), one rank at a time, and is only copied after that.

    Every rank must create the same rings (length, dtype, op); rings in flight
    together on one communicator need different ``tag`` s. Nothing is sent to check
    (it would be a blocking round trip; ``GradBuckets`` checks its layout once).
    ``inplace=True`` reduces in ``x`` itself (C-contiguous), otherwise in a copy.
    """

    OP = "allreduce"

    def __init__(self, comm, x, op="sum", *, tag=DEFAULT_TAG, inplace=False):
        x = np.asarray(x)
        problem = (f"unknown op {op!r}; choose from {', '.join(REDUCTIONS)}" if op not in REDUCTIONS else
                   f"dtype {x.dtype} is not supported" if x.dtype not in DTYPES else
                   "inplace needs a C-contiguous array" if inplace and not x.flags.c_contiguous
                   else None)
        if problem:
            raise ValueError(f"RingAllreduce: {problem}")
        self.comm, self.op, self.shape, self.dtype = comm, op, x.shape, x.dtype
        self.buf = x.reshape(-1) if inplace else np.array(x, order="C", copy=True).reshape(-1)
        self.p, self.rank = comm.Get_size(), comm.Get_rank()
        self.offsets = split_offsets(self.buf.size, self.p)
        self._incoming = np.empty(self.offsets[1] if self.p > 1 else 0, x.dtype)  # largest block
        self._sum_into = None
        self._begin(comm, tag)

    result = property(lambda self: self.buf.reshape(self.shape), doc="x's shape; final once done")

    def _post(self):
        """Post step ``self._step``: Irecv from the left, Isend to the right."""
        p, r, s = self.p, self.rank, self._step
        if s == 2 * (p - 1):
            return self._finish()
        self.ch.step()
        left, right = (r - 1) % p, (r + 1) % p
        if s < p - 1:  # reduce-scatter: pass a partial on, add the one received into ours
            send_b, recv_b = ring_step(p, r, s, "reduce_scatter")
            mine = block(self.buf, self.offsets, recv_b)
            part = self._incoming[:mine.size]
            self._requests = [self.ch.irecv(part, left),
                              self.ch.isend(block(self.buf, self.offsets, send_b), right)]
            self._sum_into = (part, mine)
        else:  # allgather: pass on the finished block received last (own block first)
            send_b, recv_b = ring_step(p, r, s - (p - 1), "allgather")
            self._requests = [self.ch.irecv(block(self.buf, self.offsets, recv_b), left),
                              self.ch.isend(block(self.buf, self.offsets, send_b), right)]
            self._sum_into = None

    def _combine(self):
        if self._sum_into is not None:
            part, mine = self._sum_into
            combine(self.op, part, mine, out=mine)  # partial from earlier ranks, then ours
