"""Point-to-point messages with a tally: the only way the algorithms talk.

A :class:`Channel` wraps a communicator for the duration of one collective call.
It sends NumPy buffers as raw bytes (``[array, MPI.BYTE]``), so every dtype --
float16 and bfloat16 included, which MPI has no type for -- travels the same
way and nothing is pickled. It counts the bytes and messages this rank sends and
the communication rounds ("steps") of the algorithm, and can keep a trace of
``(step, source, dest, nbytes)`` for the lessons' who-sends-what pictures.

The blocking collectives all use one tag, :data:`TAG`. MPI never lets two
messages between the same pair of ranks on the same communicator and tag
overtake each other, and every rank runs the collectives in the same order, so
consecutive collectives cannot steal each other's messages. Operations that are
in flight *together* (the non-blocking rings of mpipar.collectives.nonblocking)
each need a tag of their own.

Every blocking receive checks that the message filled its buffer exactly. With the
collectives' argument agreement on (``check=True``) that never fails; without it
(``check=False``) it is the check that remains: ranks that disagree on a length would
otherwise leave the stale tail of a buffer in the result. (A message longer than its
buffer is MPI's own truncation error.)
"""
from mpi4py import MPI
import numpy as np

from . import scratch

TAG = 0x6D70  # "mp"


_NOTHING = [np.empty(0, np.uint8), MPI.BYTE]  # an empty message (a block of 0 elements)


def _wire(buf):
    """The buffer spec mpi4py needs: the array's bytes, no datatype conversion."""
    if not buf.flags.c_contiguous:
        raise ValueError("internal error: message buffers must be contiguous")
    return [buf, MPI.BYTE] if buf.nbytes else _NOTHING


class Channel:
    """Counting send/recv on ``comm`` for one collective call."""

    def __init__(self, comm, trace=False, tag=TAG):
        self.comm = comm
        self.tag = tag
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.bytes_sent = 0
        self.messages = 0
        self.steps = 0
        self.trace = [] if trace else None
        self._status = MPI.Status()  # one per channel: a call's receives happen one at a time

    def step(self):
        """Mark the start of a new communication round of the algorithm."""
        self.steps += 1

    def _count(self, buf, dest):
        self.bytes_sent += buf.nbytes
        self.messages += 1
        if self.trace is not None:
            self.trace.append((self.steps, self.rank, int(dest), int(buf.nbytes)))

    def count_sends(self, nbytes, dests):
        """Tally messages of ``nbytes`` each to ``dests`` that were posted without the Channel
        (persistent requests: multiplying.py)."""
        self.bytes_sent += nbytes * len(dests)
        self.messages += len(dests)
        if self.trace is not None:
            self.trace.extend((self.steps, self.rank, int(d), int(nbytes)) for d in dests)

    def send(self, buf, dest):
        self._count(buf, dest)
        self.comm.Send(_wire(buf), dest, self.tag)

    def recv(self, buf, source):
        status = self._status
        self.comm.Recv(_wire(buf), source, self.tag, status)
        if status.Get_count(MPI.BYTE) != buf.nbytes:
            _filled(status, buf, source)

    def sendrecv(self, sendbuf, dest, recvbuf, source):
        """Send to ``dest`` and receive from ``source`` at once (no deadlock in rings).

        The algorithms' inner step: the tally is inlined and the arguments positional,
        each saving a Python call per message."""
        self.bytes_sent += sendbuf.nbytes
        self.messages += 1
        if self.trace is not None:
            self.trace.append((self.steps, self.rank, int(dest), int(sendbuf.nbytes)))
        status = self._status
        self.comm.Sendrecv(_wire(sendbuf), dest, self.tag, _wire(recvbuf), source, self.tag, status)
        if status.Get_count(MPI.BYTE) != recvbuf.nbytes:
            _filled(status, recvbuf, source)

    def scratch(self, count, dtype, slot="incoming"):
        """A receive-only temporary of this call, reused across calls on this communicator
        (scratch.py): never what a collective returns."""
        return scratch.buffer(self.comm, count, dtype, slot)

    def isend(self, buf, dest):
        self._count(buf, dest)
        return self.comm.Isend(_wire(buf), dest=dest, tag=self.tag)

    def irecv(self, buf, source):
        return self.comm.Irecv(_wire(buf), source=source, tag=self.tag)

    @staticmethod
    def waitall(requests):
        MPI.Request.Waitall(requests)


def _filled(status, buf, source):
    got = status.Get_count(MPI.BYTE)
    if got != buf.nbytes:
        raise ValueError(f"received {got} bytes from rank {source} where {buf.nbytes} were expected: "
                         "the ranks' arguments differ (check=False skips the agreement that names them)")


def quiet_wait(request, interval=2e-4):
    """Wait for a non-blocking request while sleeping, so an idle rank leaves its
    core to the ranks that are measuring (blocking MPI waits spin)."""
    import time
    while not request.Test():
        time.sleep(interval)
