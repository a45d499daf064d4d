"""A non-blocking ring reduce-scatter: started now, advanced by polling, finished later.

The steps, block split and every combine are those of the blocking ring
(``mpipar.collectives.reduce_scatter.ring``: the same ``blocks.ring_step`` and
``split_offsets``, the partial received added on the left of this rank's data), so rank
r ends with block r of the sum, bitwise what ``reduce_scatter(comm, x, algorithm="ring")``
returns, having sent every block but its own ((p-1) alpha + (p-1)/p n (beta + gamma);
Thakur, Rabenseifner & Gropp 2005, sec. 4.3). Messages advance only while some call is
inside MPI: the caller polls with ``progress()`` (see ``nonblocking.py``).
"""

import numpy as np

from .blocks import block, combine, ring_step, split_offsets
from .nonblocking import DEFAULT_TAG, PolledRing

__all__ = ["RingReduceScatter"]


class RingReduceScatter(PolledRing):
    """Non-blocking ring reduce-scatter (sum) of the flat array ``x``: ``start()``, then
    ``progress()`` until True or ``wait()``; ``.result`` is this rank's block.

    ``x`` is reduced in place (it must be a C-contiguous 1-D float array this object may
    overwrite). Every rank must pass the same length and dtype (nothing is sent to check);
    reductions in flight together on one communicator need different ``tag`` s.
    """

    OP = "reduce_scatter"

    def __init__(self, comm, x, *, tag=DEFAULT_TAG):
        if x.ndim != 1 or not x.flags.c_contiguous:
            raise ValueError("RingReduceScatter: x must be a C-contiguous 1-D array")
        self.buf, self.p, self.rank = x, comm.Get_size(), comm.Get_rank()
        self.offsets = split_offsets(x.size, self.p)
        self._incoming = np.empty(self.offsets[1] if self.p > 1 else 0, x.dtype)  # largest block
        self._sum_into = None
        self._begin(comm, tag)

    @property
    def result(self):
        if not self.done:
            raise RuntimeError("RingReduceScatter: result before the reduction is done")
        return block(self.buf, self.offsets, self.rank)

    def _post(self):
        """Post step ``self._step``: Irecv a partial from the left, Isend one to the right."""
        p, r = self.p, self.rank
        if self._step == p - 1:
            return self._finish()
        self.ch.step()
        send_b, recv_b = ring_step(p, r, self._step, "reduce_scatter")
        mine = block(self.buf, self.offsets, recv_b)
        part = self._incoming[:mine.size]
        self._requests = [self.ch.irecv(part, (r - 1) % p),
                          self.ch.isend(block(self.buf, self.offsets, send_b), (r + 1) % p)]
        self._sum_into = (part, mine)

    def _combine(self):
        part, mine = self._sum_into
        if mine.size:  # the partial from earlier ranks of the ring, then ours
            combine("sum", part, mine, out=mine)
