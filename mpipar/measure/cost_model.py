"""The alpha-beta-gamma cost model of collective communication.

A message of n bytes costs alpha + n*beta seconds (latency plus inverse
bandwidth); reducing n bytes locally costs n*gamma. Each algorithm's formula,
``cost(p, n, alpha, beta, gamma)`` -> seconds, stands in its collective's table
beside the algorithm (``mpipar.collectives.allreduce.ALGORITHMS`` and its
siblings); :class:`CostModel` holds the three constants and looks the formulas up.
They are the closed forms of Thakur, Rabenseifner & Gropp, "Optimization of
Collective Communication Operations in MPICH" (IJHPCA 2005), with lg p rounded
up and, where an algorithm needs a power of two, the cost of folding the extra
ranks in and out added (q = 2^floor(lg p); see ``mpipar.collectives.blocks.Fold``).
A formula is written in seconds, term by term as in the paper: at a crossover size
two algorithms can cost exactly the same, and the same expression gives the same
floating-point number, so ``best`` (``algorithm="auto"``) settles such ties alike
on every rank and in every run.

n is the payload: the input of allreduce, broadcast and reduce_scatter, the
whole gathered result of allgather, the message of a point-to-point ``"send"`` or
``"recv"`` (``mpipar.parallel.p2p``, algorithm ``"p2p"``): one message, the model's
own unit, alpha + n*beta (Hockney 1994) whatever the communicator's size, since
a rank sending to itself still sends a message.
"""
from dataclasses import asdict, dataclass
import time
from typing import Callable, NamedTuple

import numpy as np

from .units import format_seconds


class Algorithm(NamedTuple):
    """An entry of a collective's ``ALGORITHMS`` table: the function, and its cost formula."""

    run: Callable  #: run(ch, buf, ...) on a Channel, as the collective's module describes
    cost: Callable  #: cost(p, n, alpha, beta, gamma): seconds on p ranks for a payload of n bytes


def ceil_lg(p):
    """ceil(lg p) for p >= 1: the rounds of a binomial tree, or of Bruck's allgather."""
    return (p - 1).bit_length()


def floor_lg(p):
    """lg q, q = 2^floor(lg p): the rounds of a power-of-two phase on q of the p ranks."""
    return p.bit_length() - 1


def folds(p):
    """1 if p is not a power of two (the extra ranks are folded in before and out after), else 0."""
    return int(p & (p - 1) != 0)


def share(p):
    """(p-1)/p: the part of the data that is not a rank's own block."""
    return (p - 1) / p


MESSAGE_OPS = ("send", "recv")  #: point-to-point operations: priced per message, not per collective


def message(p, n, alpha, beta, gamma):
    """One point-to-point message of n bytes: alpha + n*beta (p plays no part)."""
    return alpha + n * beta


def bandwidth_factor(op, p):
    """The share of the payload that must leave the busiest rank in any algorithm:
    2(p-1)/p for allreduce, (p-1)/p for allgather and reduce_scatter, 1 for broadcast,
    and 1 for a send or a recv (the whole message leaves one rank and reaches another).

    Times beta it is the bandwidth lower bound; times the algorithm bandwidth S/t it is
    the bus bandwidth of the nccl-tests convention (doc/PERFORMANCE.md there).
    """
    return {"allreduce": 2 * (p - 1) / p, "allgather": (p - 1) / p,
            "reduce_scatter": (p - 1) / p, "broadcast": 1.0, "send": 1.0, "recv": 1.0}[op]


def _table(op):
    """The algorithm table of ``op``: name -> Algorithm (a collective's, or p2p's for send/recv)."""
    # not at the top: mpipar.collectives and mpipar.parallel.p2p import this module
    if op in MESSAGE_OPS:
        from ..parallel.p2p import ALGORITHMS as tables
    else:
        from ..collectives import ALGORITHMS as tables
    if op not in tables:
        from ..collectives import ALGORITHMS
        raise ValueError(f"no cost formulas for {op!r}; choose from "
                         f"{', '.join([*ALGORITHMS, *MESSAGE_OPS])}")
    return tables[op]


@dataclass(frozen=True)
class CostModel:
    """Predicted seconds for each collective algorithm from three machine constants."""

    alpha: float = 1e-5   #: seconds per message (latency, incl. Python overhead)
    beta: float = 2e-10   #: seconds per byte sent (1 / bandwidth)
    gamma: float = 2e-10  #: seconds per byte reduced locally
    source: str = "default"  #: where the constants came from

    def _seconds(self, entry, p, n):
        return entry.cost(p, n, self.alpha, self.beta, self.gamma)

    def predict(self, op, algorithm, p, n):
        """Seconds for one call of ``op`` by ``algorithm`` on p ranks with payload n bytes.

        The formula is the algorithm's entry in its collective's table. ``"mpi"`` is
        predicted as the best hand-written algorithm: what a library that picks well
        would achieve under this model. A collective on one rank costs nothing; a
        point-to-point message (``"send"``, ``"recv"``) costs alpha + n*beta on any p.
        """
        if p <= 1 and op not in MESSAGE_OPS:
            return 0.0
        table = _table(op)
        if algorithm == "mpi":
            return min(self._seconds(entry, p, n) for entry in table.values())
        if algorithm not in table:
            raise ValueError(f"no cost formula for {op} algorithm {algorithm!r}")
        return self._seconds(table[algorithm], p, n)

    def lower_bound(self, op, p, n):
        """Bandwidth lower bound: bytes that must leave the busiest rank, times beta
        (n*beta for a send or a recv, on any p: the latency alpha is not in the bound)."""
        if p <= 1 and op not in MESSAGE_OPS:
            return 0.0
        return bandwidth_factor(op, p) * n * self.beta

    def best(self, op, p, n):
        """The hand-written algorithm this model predicts to be fastest (``algorithm="auto"``)."""
        table = _table(op)
        if p <= 1:
            return next(iter(table))
        return min(table, key=lambda alg: self._seconds(table[alg], p, n))

    def to_dict(self):
        return asdict(self)

    def describe(self):
        """The three constants in words: 'alpha = 12.3 us/message, beta = 0.2 ns/byte (5 GB/s), ...'."""
        return (f"alpha = {format_seconds(self.alpha)}/message, beta = {format_seconds(self.beta)}/byte "
                f"({1e-9 / self.beta:.2f} GB/s), gamma = {format_seconds(self.gamma)}/byte "
                f"[{self.source}]")

    @classmethod
    def calibrate(cls, comm, sizes=(8, 1 << 10, 1 << 13, 1 << 16, 1 << 18, 1 << 20), trials=5):
        """Fit alpha and beta from a ping-pong between ranks 0 and 1, gamma from np.add.

        One-way time t(n) = round trip / 2; alpha, beta are the weighted
        least-squares line through (n, t(n)) with weights 1/t, so small and large
        messages count alike. Other ranks wait without spinning. The result is
        rank 0's fit, sent to every rank. Takes about a second.
        """
        from ..collectives.channel import quiet_wait  # local import: keep the model MPI-free
        rank, p = comm.Get_rank(), comm.Get_size()
        fit = None
        if rank == 0:
            peer = 1 if p > 1 else 0
            times = [_pingpong(comm, peer, n, trials) for n in sizes]
            t = np.array(times)
            A = np.stack([np.ones(len(sizes)), np.array(sizes, float)], 1) / t[:, None]
            alpha, beta = np.linalg.lstsq(A, np.ones(len(sizes)), rcond=None)[0]
            fit = (max(float(alpha), 1e-9), max(float(beta), 1e-13), _reduce_time(), p)
        elif rank == 1:
            _pingpong_echo(comm, sizes, trials)
        quiet_wait(comm.Ibarrier())
        alpha, beta, gamma, p0 = comm.bcast(fit, root=0)
        where = f"ping-pong 0<->1 in a job of {p0} ranks" if p0 > 1 else "self-messages, 1 rank"
        return cls(alpha, beta, gamma, source=f"calibrated ({where})")


def _rounds(n):
    return max(4, min(200, (1 << 22) // max(n, 1)))


def _pingpong(comm, peer, n, trials):
    """Median one-way seconds for an n-byte message between rank 0 and ``peer``."""
    buf, back = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    rounds, samples = _rounds(n), []
    for trial in range(trials + 1):  # trial 0 is the warm-up
        t0 = time.perf_counter()
        for _ in range(rounds):
            if peer == 0:
                comm.Sendrecv(buf, dest=0, recvbuf=back, source=0)
            else:
                comm.Send(buf, dest=peer)
                comm.Recv(back, source=peer)
        if trial:
            samples.append((time.perf_counter() - t0) / rounds / (1 if peer == 0 else 2))
    return float(np.median(samples))


def _pingpong_echo(comm, sizes, trials):
    for n in sizes:
        buf = np.zeros(n, np.uint8)
        for _ in range((trials + 1) * _rounds(n)):
            comm.Recv(buf, source=0)
            comm.Send(buf, dest=0)


def _reduce_time(n=1 << 20, repeats=20):
    """Seconds per byte of an in-place float32 add, median of repeats."""
    a, b = np.ones(n // 4, np.float32), np.ones(n // 4, np.float32)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.add(a, b, out=a)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples)) / n
