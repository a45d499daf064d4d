"""Allgather algorithms: every rank's block, concatenated in rank order, on every rank.

``buf`` holds the whole result; on entry only this rank's block
``buf[offsets[rank]:offsets[rank+1]]`` is filled. Blocks may differ in size.
Costs for n bytes gathered in total on p ranks (Thakur, Rabenseifner & Gropp
2005, sec. 4.1):

    naive               gather to rank 0 ((p-1) alpha + (p-1)/p n beta), then a linear
                        broadcast of all n bytes ((p-1)(alpha + n beta))
    ring                (p-1) alpha + (p-1)/p n beta
    recursive_doubling  lg p alpha + (p-1)/p n beta   (p a power of two; otherwise two
                        extra steps fold ranks q..p-1 onto 0..p-q-1 and back:
                        + alpha + n/p beta in, + alpha + n beta out)
    bruck               ceil(lg p) alpha + (p-1)/p n beta + n gamma, any p: the last
                        term is the final local rotation, every block copied once into
                        its place (the paper's "local shift"), priced as one local pass
                        over n bytes, like a reduction's

Every rank ends with identical bits: the blocks are copied, never combined.
"""

from ..measure.cost_model import Algorithm, ceil_lg, floor_lg, folds, share
from .blocks import Fold, block, pow2_floor, ring_step, span


def naive(ch, buf, offsets):
    """Every rank sends its block to rank 0, which sends the whole buffer back to each."""
    if ch.size == 1:
        return buf
    ch.step()
    if ch.rank == 0:
        for r in range(1, ch.size):
            ch.recv(block(buf, offsets, r), r)
    else:
        ch.send(block(buf, offsets, ch.rank), 0)
    ch.step()
    if ch.rank == 0:
        for r in range(1, ch.size):
            ch.send(buf, r)
    else:
        ch.recv(buf, 0)
    return buf


def ring(ch, buf, offsets, first=0):
    """Ring allgather: p-1 steps to the right-hand neighbour.

    In step s every rank passes the block it received last (its own block first)
    to its right neighbour: each block is sent p-1 times in total. The ring may
    start anywhere: position v is rank ``first`` + v (mod p) and owns block v
    (broadcast's scatter_allgather runs it relative to the root).
    """
    p = ch.size
    me = (ch.rank - first) % p
    right, left = (ch.rank + 1) % p, (ch.rank - 1) % p
    blocks = [block(buf, offsets, j) for j in range(p)]  # views, cut once
    for s in range(p - 1):
        ch.step()
        send_b, recv_b = ring_step(p, me, s, "allgather")
        ch.sendrecv(blocks[send_b], right, blocks[recv_b], left)
    return buf


def doubling_slots(ch, slotbuf, slot_offsets, q):
    """Recursive doubling among ranks 0..q-1 (q a power of two) on a slot-ordered buffer.

    Before the step with distance d, rank i holds the d slots of its aligned group
    [i - i mod d, +d); it swaps them with rank i XOR d, doubling what it holds.
    """
    i, d = ch.rank, 1
    while d < q:
        ch.step()
        mine, theirs = i & ~(d - 1), (i ^ d) & ~(d - 1)
        ch.sendrecv(span(slotbuf, slot_offsets, mine, mine + d), i ^ d,
                    span(slotbuf, slot_offsets, theirs, theirs + d), i ^ d)
        d <<= 1
    return slotbuf


def recursive_doubling(ch, buf, offsets):
    """Recursive doubling; for p not a power of two, fold the extra ranks in and out."""
    fold, rank = Fold(ch.size, offsets), ch.rank
    # fold in: an extra hands its block to its partner, which files it in place
    fold.fold_in(ch, block(buf, offsets, rank),
                 block(buf, offsets, fold.partner(rank)) if fold.stands_in(rank) else None)
    if not fold.is_extra(rank):
        slots = doubling_slots(ch, fold.to_slots(buf), fold.slot_offsets, fold.q)
        fold.from_slots(slots, buf)
    fold.sit_out(ch)
    fold.fold_out(ch, buf, buf)  # partners send the whole result back
    return buf


def bruck(ch, buf, offsets):
    """Bruck et al. (1997): ceil(lg p) steps for any p.

    Work in a buffer rotated so that this rank's block comes first (position k
    holds the block of rank + k). In the step with distance d, send the first
    min(d, p-d) blocks to rank - d and append the same number received from
    rank + d. Finally undo the rotation.
    """
    p, rank = ch.size, ch.rank
    order = [(rank + k) % p for k in range(p)]
    rot_offsets = [0]
    for j in order:
        rot_offsets.append(rot_offsets[-1] + offsets[j + 1] - offsets[j])
    work = ch.scratch(buf.size, buf.dtype, "rotated")
    block(work, rot_offsets, 0)[...] = block(buf, offsets, rank)
    d = 1
    while d < p:
        ch.step()
        count = min(d, p - d)
        # what rank+d sends are its first `count` blocks: ours at positions d..d+count-1
        ch.sendrecv(span(work, rot_offsets, 0, count), (rank - d) % p,
                    span(work, rot_offsets, d, d + count), (rank + d) % p)
        d <<= 1
    for k, j in enumerate(order):
        block(buf, offsets, j)[...] = block(work, rot_offsets, k)
    return buf


# name -> the function, and its cost in seconds on p ranks for a gathered result of n bytes:
# the formulas of the table at the top (q = 2^floor(lg p); folds(p) is 1 when q < p)
ALGORITHMS = {
    "naive": Algorithm(naive, lambda p, n, alpha, beta, gamma:
                       (p - 1) * alpha + share(p) * n * beta + (p - 1) * (alpha + n * beta), alone=True),
    "ring": Algorithm(ring, lambda p, n, alpha, beta, gamma: (p - 1) * alpha + share(p) * n * beta),
    "recursive_doubling": Algorithm(recursive_doubling, lambda p, n, alpha, beta, gamma:
                                    floor_lg(p) * alpha + share(pow2_floor(p)) * n * beta
                                    + folds(p) * (2 * alpha + n / p * beta + n * beta)),
    "bruck": Algorithm(bruck, lambda p, n, alpha, beta, gamma:
                       ceil_lg(p) * alpha + share(p) * n * beta + n * gamma),
}
