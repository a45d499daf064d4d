"""Recursive multiplying all-reduce: recursive doubling with k-way exchanges.

Ruefenacht, Bull & Booth, "Generalisation of recursive doubling for AllReduce: now with
simulation", Parallel Computing 69 (2017). Write p = k_1 k_2 ... k_m (factors of at most
:data:`RADIX` where p has them) and each rank's number in that mixed radix. In round j every
rank exchanges its whole partial result with the k_j - 1 ranks that differ from it only in
digit j, all messages at once, and reduces the k_j partials. After m rounds every rank holds
the reduction of all p inputs. The cost model charges every message its latency, overlapped
or not (the library still handles each one; the paper's model charges a round once):

    sum over rounds of  (k_j - 1) (alpha + n beta + n gamma)

So p = 16 takes 2 rounds (radix 4) where recursive doubling takes 4 and a binomial tree 8,
at the price of (k - 1) times the bytes per round: an algorithm for small messages.
Measured on the 16-core machine (``bench tune``, 8 B - 16 KiB) it was the fastest
hand-written all-reduce at p = 9 at every size, at p = 3 at all but 128-512 B, at p = 6 at
8 B and from 2 KiB, and at 512 B-2 KiB on 4 and 16 ranks. At 8 B on 16 ranks it ties
recursive doubling and a tree (34, 33 and 35 us; ``algorithm="mpi"`` 13 us): the Python
around a call, and the wait for the slowest of k - 1 peers, outweigh the latencies it saves.
``bench tune`` measures where it wins; without a table, ``auto`` (the model above) picks it
only where a round of three spares recursive doubling's fold of the extra ranks (p = 3, 6,
9 for small messages). No folding is needed for p not a power of two: p = 12 is 4 x 3, a
prime p is one round of p - 1 messages.

The messages of a round are MPI *persistent* requests (``Send_init``/``Recv_init``), made
once per communicator and size and restarted by each call (``Startall``, ``Waitall``): two
calls from Python per round instead of two per message. On the 16-core machine, 8 B at
p = 16, two such rounds in bare mpi4py (no tally, no checks) took 21 us, recursive
doubling's four Sendrecvs the same, a bare ``comm.Allreduce`` 8 us.
Up to :data:`KEEP_UP_TO` bytes the plan (requests and buffers) is kept (scratch.py, on a
duplicate of the communicator that only plans use); larger calls make one and free it.

Identical bits on every rank: the k partials of a round are reduced one pair at a time in
member order (``combine``: the same expressions on every member), and the members of a group
hold identical partials after it -- so in the next round every rank reduces operands with
the same bits in the same order. 16-bit floats are combined in float32, as everywhere.
"""
from mpi4py import MPI
import numpy as np

from . import scratch
from .blocks import combine
from .channel import _filled

RADIX = 4  #: the largest factor a round uses where p has it (measured: 3 partners at once
#: took about what 1 did at 8 B on the 16-core machine; 7 at once took 1.3x)
KEEP_UP_TO = 1 << 16  #: plans for payloads up to this many bytes are kept per communicator


def factors(p, radix=RADIX):
    """The rounds' group sizes: the largest factor <= radix of what is left, else its
    smallest prime factor. 16 -> [4, 4], 12 -> [4, 3], 8 -> [4, 2], 7 -> [7], 1 -> []."""
    out = []
    while p > 1:
        k = next((f for f in range(radix, 1, -1) if p % f == 0), None)
        if k is None:
            k = next(f for f in range(2, p + 1) if p % f == 0)
        out.append(k)
        p //= k
    return out


class Round:
    """One round on this rank: ``rows[m]`` holds member m's partial (``rows[own]`` its own,
    the one sent), ``requests`` the persistent sends and receives of the round."""

    def __init__(self, comm, rank, stride, k, count, dtype, tag):
        self.own = (rank // stride) % k
        base = rank - self.own * stride
        members = [m for m in range(k) if m != self.own]
        self.peers = [base + m * stride for m in members]
        self.rows = np.empty((k, count), dtype)
        mine = [self.rows[self.own], MPI.BYTE]
        self.requests = []
        for m, peer in zip(members, self.peers):
            self.requests.append(comm.Recv_init([self.rows[m], MPI.BYTE], peer, tag))
            self.requests.append(comm.Send_init(mine, peer, tag))
        self.statuses = [MPI.Status() for _ in self.requests]
        self.received = list(zip(self.statuses[::2], self.peers))  # the receives' statuses
        self.members = list(self.rows)  #: one view per member's row, in member order
        self.mine = self.members[self.own]  #: the row this rank fills and sends


class Plan:
    """The rounds of one payload size on one communicator."""

    def __init__(self, comm, count, dtype, tag):
        rank, stride, self.rounds = comm.Get_rank(), 1, []
        for k in factors(comm.Get_size()):
            self.rounds.append(Round(comm, rank, stride, k, count, dtype, tag))
            stride *= k
        self.nbytes = sum(r.rows.nbytes for r in self.rounds)

    def free(self):
        for r in self.rounds:
            for req in r.requests:
                req.Free()
        self.rounds = []


def recursive_multiplying(ch, x, op):
    """All-reduce of x (this rank's private copy) by k-way exchanges; returns a new array."""
    if ch.size == 1:
        return x
    make = lambda comm: Plan(comm, x.size, x.dtype, ch.tag)  # noqa: E731
    key, kept = ("multiplying", x.size, x.dtype), x.nbytes <= KEEP_UP_TO
    plan = scratch.plan(ch.comm, key, make) if kept else make(ch.comm)
    rounds, nbytes = plan.rounds, x.nbytes
    try:
        rounds[0].mine[...] = x
        for j, r in enumerate(rounds):
            ch.step()
            ch.count_sends(nbytes, r.peers)
            MPI.Prequest.Startall(r.requests)
            MPI.Request.Waitall(r.requests, r.statuses)
            for status, peer in r.received:
                if status.Get_count(MPI.BYTE) != nbytes:
                    _filled(status, r.mine, peer)
            out = rounds[j + 1].mine if j + 1 < len(rounds) else np.empty_like(x)
            _reduce(op, r.members, out)
    except BaseException:
        if kept:  # a failed round may leave requests active: never restart this plan
            scratch.drop_plan(ch.comm, key)
        raise
    finally:
        if not kept:
            plan.free()
    return out


def _reduce(op, members, out):
    """out = members[0] op members[1] op ... in member order (the lower rank on the left), one
    pair at a time (``combine``). For k <= 4 that is as fast as one ``ufunc.reduce`` (0.8 us
    for 4 rows of 8 B) and for k = 2 three times faster (0.24 us)."""
    combine(op, members[0], members[1], out=out)
    for m in members[2:]:
        combine(op, out, m, out=out)


def cost(p, n, alpha, beta, gamma):
    """sum over rounds of (k - 1)(alpha + n beta + n gamma)."""
    return sum((k - 1) * (alpha + n * beta + n * gamma) for k in factors(p))
