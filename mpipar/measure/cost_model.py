"""The alpha-beta-gamma cost model of collective communication.

A message of n bytes costs alpha + n*beta seconds (latency plus inverse
bandwidth); reducing n bytes locally costs n*gamma. The closed forms below are
those of Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH" (IJHPCA 2005), with lg p rounded up and, where an algorithm
needs a power of two, the cost of folding the extra ranks in and out added
(q = 2^floor(lg p); see ``mpipar.collectives.blocks.Fold``).

n is the payload: the input of allreduce, broadcast and reduce_scatter, the
whole gathered result of allgather.
"""
from dataclasses import asdict, dataclass
import time

import numpy as np

ALGORITHMS = {
    "allreduce": ("naive", "tree", "recursive_doubling", "ring", "rabenseifner"),
    "allgather": ("naive", "ring", "recursive_doubling", "bruck"),
    "reduce_scatter": ("naive", "ring", "recursive_halving"),
    "broadcast": ("naive", "binomial", "scatter_allgather"),
}


def bandwidth_factor(op, p):
    """The share of the payload that must leave the busiest rank in any algorithm:
    2(p-1)/p for allreduce, (p-1)/p for allgather and reduce_scatter, 1 for broadcast.

    Times beta it is the bandwidth lower bound; times the algorithm bandwidth S/t it is
    the bus bandwidth of the nccl-tests convention (doc/PERFORMANCE.md there).
    """
    return {"allreduce": 2 * (p - 1) / p, "allgather": (p - 1) / p,
            "reduce_scatter": (p - 1) / p, "broadcast": 1.0}[op]


def _lg(p):
    return (p - 1).bit_length()  # ceil(lg p) for p >= 1


@dataclass(frozen=True)
class CostModel:
    """Predicted seconds for each collective algorithm from three machine constants."""

    alpha: float = 1e-5   #: seconds per message (latency, incl. Python overhead)
    beta: float = 2e-10   #: seconds per byte sent (1 / bandwidth)
    gamma: float = 2e-10  #: seconds per byte reduced locally
    source: str = "default"  #: where the constants came from

    def predict(self, op, algorithm, p, n):
        """Seconds for one call of ``op`` by ``algorithm`` on p ranks with payload n bytes.

        ``"mpi"`` is predicted as the best hand-written algorithm: what a library
        that picks well would achieve under this model.
        """
        if p <= 1:
            return 0.0
        if algorithm == "mpi":
            return min(self.predict(op, a, p, n) for a in ALGORITHMS[op])
        a, b, g = self.alpha, self.beta, self.gamma
        lg, f = _lg(p), (p - 1) / p
        # power-of-two algorithms run on q = 2^floor(lg p) ranks; if q < p the extra
        # ranks are folded in before and out after (`odd` is then 1)
        q = 1 << (p.bit_length() - 1)
        lq, fq, odd = _lg(q), (q - 1) / q, int(q != p)
        if op == "broadcast":
            if algorithm == "naive":
                return (p - 1) * (a + n * b)
            if algorithm == "binomial":
                return lg * (a + n * b)
            if algorithm == "scatter_allgather":
                return (lg + p - 1) * a + 2 * f * n * b
        elif op == "allgather":
            if algorithm == "naive":
                return (p - 1) * a + f * n * b + (p - 1) * (a + n * b)
            if algorithm == "ring":
                return (p - 1) * a + f * n * b
            if algorithm == "recursive_doubling":
                return lq * a + fq * n * b + odd * (2 * a + n / p * b + n * b)
            if algorithm == "bruck":
                return lg * a + f * n * b
        elif op == "reduce_scatter":
            if algorithm == "naive":
                return (p - 1) * (a + n * b + n * g) + (p - 1) * a + f * n * b
            if algorithm == "ring":
                return (p - 1) * a + f * n * (b + g)
            if algorithm == "recursive_halving":
                return lq * a + fq * n * (b + g) + odd * (2 * a + n * (b + g) + n / p * b)
        elif op == "allreduce":
            if algorithm == "naive":
                return 2 * (p - 1) * (a + n * b) + (p - 1) * n * g
            if algorithm == "tree":
                return 2 * lg * (a + n * b) + lg * n * g
            if algorithm == "recursive_doubling":
                return lq * (a + n * b + n * g) + odd * (2 * a + 2 * n * b + n * g)
            if algorithm == "ring":
                return 2 * (p - 1) * a + 2 * f * n * b + f * n * g
            if algorithm == "rabenseifner":
                return 2 * lq * a + 2 * fq * n * b + fq * n * g + odd * (2 * a + 2 * n * b + n * g)
        raise ValueError(f"no cost formula for {op} algorithm {algorithm!r}")

    def lower_bound(self, op, p, n):
        """Bandwidth lower bound: bytes that must leave the busiest rank, times beta."""
        if p <= 1:
            return 0.0
        return bandwidth_factor(op, p) * n * self.beta

    def best(self, op, p, n):
        """The hand-written algorithm this model predicts to be fastest (``algorithm="auto"``)."""
        return min(ALGORITHMS[op], key=lambda alg: self.predict(op, alg, p, n))

    def to_dict(self):
        return asdict(self)

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
