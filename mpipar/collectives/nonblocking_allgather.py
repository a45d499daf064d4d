"""A non-blocking ring allgather: started now, advanced by polling, finished later.

The steps and blocks are those of the blocking ring (``mpipar.collectives.allgather.ring``,
the same ``blocks.ring_step``): p-1 steps, each rank passing the block it received last
to its right-hand neighbour, so it sends and costs what the blocking ring does
((p-1) alpha + (p-1)/p n beta; Thakur, Rabenseifner & Gropp 2005, sec. 4.1). Blocks
may differ in size. Messages advance only while some call is inside MPI: the first
step's messages are posted by ``start()``; later steps wait for ``progress()`` or
``wait()`` (see ``nonblocking.py`` for why).
"""

import numpy as np

from .blocks import block, ring_step
from .nonblocking import DEFAULT_TAG, PolledRing

__all__ = ["RingAllgather"]


class RingAllgather(PolledRing):
    """Every rank's ``mine`` concatenated in rank order, ``lengths[r]`` numbers from rank r:
    ``start()``, then ``progress()`` until True or ``wait()``; the result is ``.result``.

    Every rank must pass the same ``lengths`` and dtype (nothing is sent to check);
    gathers in flight together on one communicator need different ``tag`` s.
    """

    OP = "allgather"

    def __init__(self, comm, mine, lengths, *, tag=DEFAULT_TAG):
        mine = np.asarray(mine).reshape(-1)
        self.p, self.rank = comm.Get_size(), comm.Get_rank()
        if len(lengths) != self.p or mine.size != lengths[self.rank]:
            raise ValueError(f"RingAllgather: rank {self.rank} holds {mine.size} numbers, "
                             f"lengths say {list(lengths)}")
        self.offsets = [0]
        for n in lengths:
            self.offsets.append(self.offsets[-1] + int(n))
        self.buf = np.empty(self.offsets[-1], mine.dtype)
        block(self.buf, self.offsets, self.rank)[...] = mine
        self._begin(comm, tag)

    @property
    def result(self):
        if not self.done:
            raise RuntimeError("RingAllgather: result before the gather is done")
        return self.buf

    def _post(self):
        """Post step ``self._step``: Irecv from the left, Isend to the right (or finish)."""
        p, r = self.p, self.rank
        if self._step == p - 1:
            return self._finish()
        self.ch.step()
        send_b, recv_b = ring_step(p, r, self._step, "allgather")
        self._requests = [self.ch.irecv(block(self.buf, self.offsets, recv_b), (r - 1) % p),
                          self.ch.isend(block(self.buf, self.offsets, send_b), (r + 1) % p)]

    def _combine(self):
        pass  # an allgather only copies: the block arrived where it belongs
