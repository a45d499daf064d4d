"""Several polled rings in flight at once, driven by one thread.

A ring all-reduce of p ranks is 2(p - 1) steps, each a message to the right neighbour
and one from the left; for a 512 KiB bucket on one machine every step is short and
bound by latency, so a rank that runs its buckets' rings one after another spends most
of the time waiting for one small message at a time. With several rings started the
waits overlap: while bucket k's next message travels, bucket k + 1's has arrived and
can be combined. PyTorch DDP does the same by launching each bucket's all-reduce
asynchronously as soon as it is ready, several in flight (Li et al. 2020, "PyTorch
Distributed", sec. 3.2); NCCL then interleaves them on its stream.

:class:`RingDriver` keeps up to ``max_in_flight`` rings started and waits on the union
of their outstanding requests in one ``MPI_Waitsome`` (inside MPI, the GIL released),
then advances every ring whose step has arrived. Rings are added (from any thread) and
started in the order they were added, never more than ``max_in_flight`` unfinished: the
same order on every rank as long as every rank adds the same rings in the same order.
Which ring finishes first may differ between ranks; each ring has its own tag, so their
messages never match another's. No ring waits for one that started later, so no rank
can wait for a message its peer will only send after waiting for it (every ring in
flight on one rank is either finished or in flight on every other).

A ring's steps and combines do not depend on when they run, so results keep the bits
of one ring after another (``max_in_flight=1``) and of the blocking ring.

Driving: ``pump()`` never blocks (a main thread that polls between layers); ``run(n)``
blocks until ``n`` rings have been added and all are done -- on a communication thread
(``ProgressEngine.submit(driver.run, n)``) or on the main thread to finish. A ring added
while ``run`` waits inside MPI starts when the next message of one in flight arrives (or
at once when none is in flight); ``poll_seconds`` makes ``run`` test and sleep instead
of spinning inside MPI.
"""
from collections import deque
import queue
import time

from mpi4py import MPI

__all__ = ["RingDriver"]

_CANCEL = object()


class RingDriver:
    """Drive the added :class:`~mpipar.collectives.nonblocking.PolledRing` s, up to
    ``max_in_flight`` at once (None: all of them); see the module docstring."""

    def __init__(self, max_in_flight=None, poll_seconds=None):
        if max_in_flight is not None and (isinstance(max_in_flight, bool) or
                                          not isinstance(max_in_flight, int) or max_in_flight < 1):
            raise ValueError(f"RingDriver: max_in_flight must be a whole number >= 1 or None, "
                             f"not {max_in_flight!r}")
        self.max_in_flight, self.poll_seconds = max_in_flight, poll_seconds
        self._added = queue.SimpleQueue()  # from any thread to the driving one
        self._waiting, self._flight = deque(), []  # the driving thread's own
        self.finished = 0  #: rings done so far (written by the driving thread)
        self.most_in_flight = 0  #: the most rings that were in flight together
        self._cancelled = False

    def add(self, ring):
        """Queue an unstarted ring; it starts in turn (any thread may call this)."""
        self._added.put(ring)

    def cancel(self):
        """Make ``run`` return at its next look at the queue (rings left unfinished)."""
        self._added.put(_CANCEL)

    def _take(self, block=False):
        """Move what was added into the waiting line; with ``block``, wait for one."""
        while True:
            try:
                item = self._added.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is _CANCEL:
                self._cancelled = True
            else:
                self._waiting.append(item)

    def pump(self):
        """Start waiting rings while fewer than ``max_in_flight`` are unfinished and advance
        every ring in flight as far as arrived messages allow; never blocks. True when
        nothing added is left unfinished."""
        self._take()
        while True:
            while self._waiting and (self.max_in_flight is None
                                     or len(self._flight) < self.max_in_flight):
                self._flight.append(self._waiting.popleft().start())
            self.most_in_flight = max(self.most_in_flight, len(self._flight))
            still = [ring for ring in self._flight if not ring.progress()]
            self.finished += len(self._flight) - len(still)
            self._flight = still
            if not self._waiting or (self.max_in_flight is not None
                                     and len(still) >= self.max_in_flight):
                return not self._flight and not self._waiting

    def run(self, count):
        """Drive until ``count`` rings have been added and every one is done (or ``cancel()``)."""
        while True:
            idle = self.pump()
            if self._cancelled or self.finished >= count:
                return self.finished
            if idle:
                self._take(block=True)  # nothing in flight: wait for the next ring
                continue
            requests = [r for ring in self._flight for r in ring.pending]
            if not requests:
                continue
            if self.poll_seconds is None:
                MPI.Request.Waitsome(requests)  # until one of the rings' messages is in
            else:
                while MPI.Request.Testsome(requests) == []:
                    time.sleep(self.poll_seconds)
