"""Broadcast algorithms: root's buffer to every rank, in place.

Costs for n bytes on p ranks (Thakur, Rabenseifner & Gropp 2005, sec. 3;
alpha = latency per message, beta = seconds per byte):

    naive               (p-1)(alpha + n beta)            root sends p-1 copies
    binomial            ceil(lg p)(alpha + n beta)       copies double each round
    scatter_allgather   (ceil(lg p) + p-1) alpha + 2 (p-1)/p n beta
                        (van de Geijn: binomial scatter, then ring allgather)

Every rank ends with identical bits because broadcast only copies: no
arithmetic touches the data.
"""
from ..measure.cost_model import Algorithm, ceil_lg, share
from . import allgather
from .blocks import split_offsets


def naive(ch, buf, root):
    """Linear broadcast: the root sends the whole buffer to each rank in turn."""
    if ch.size == 1:
        return buf
    ch.step()
    if ch.rank == root:
        for r in range(ch.size):
            if r != root:
                ch.send(buf, r)
    else:
        ch.recv(buf, root)
    return buf


def binomial(ch, buf, root):
    """Binomial tree: in round k, every rank that has the data sends it 2^k ranks on.

    Ranks are renumbered relative to the root (v = rank - root mod p). A rank
    with v < 2^k holds the data after round k and sends it to v + 2^k.
    """
    p, v = ch.size, (ch.rank - root) % ch.size
    mask = 1
    while mask < p:
        ch.step()
        if v < mask and v + mask < p:
            ch.send(buf, (v + mask + root) % p)
        elif mask <= v < 2 * mask:
            ch.recv(buf, (v - mask + root) % p)
        mask <<= 1
    return buf


def scatter_allgather(ch, buf, root):
    """Van de Geijn's long-message broadcast: scatter p blocks, then allgather them.

    Scatter: the range of blocks a rank is responsible for is halved each round;
    the rank at the low end keeps the lower part and sends the upper part to the
    rank at its start. After ceil(lg p) rounds relative rank v holds block v.
    Allgather: the ring algorithm over relative ranks (the ring starts at the root).
    """
    p, v = ch.size, (ch.rank - root) % ch.size
    offsets = split_offsets(buf.size, p)
    real = lambda w: (w + root) % p  # noqa: E731  relative -> real rank
    lo, hi, rounds = 0, p, 0
    while hi - lo > 1:
        ch.step()
        rounds += 1
        mid = lo + (hi - lo + 1) // 2
        part = buf[offsets[mid]:offsets[hi]]
        if v == lo:
            ch.send(part, real(mid))
        elif v == mid:
            ch.recv(part, real(lo))
        lo, hi = (lo, mid) if v < mid else (mid, hi)
    ch.steps += ceil_lg(p) - rounds  # the ceil(lg p) rounds, counting those sat out
    return allgather.ring(ch, buf, offsets, first=root)


# name -> the function, and its cost in seconds on p ranks for an n-byte buffer: the formulas
# of the table at the top
ALGORITHMS = {
    "naive": Algorithm(naive, lambda p, n, alpha, beta, gamma: (p - 1) * (alpha + n * beta), alone=True),
    "binomial": Algorithm(binomial, lambda p, n, alpha, beta, gamma: ceil_lg(p) * (alpha + n * beta),
                          alone=True),
    "scatter_allgather": Algorithm(scatter_allgather, lambda p, n, alpha, beta, gamma:
                                   (ceil_lg(p) + p - 1) * alpha + 2 * share(p) * n * beta),
}
