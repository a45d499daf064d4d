"""Allgather algorithms: every rank's block, concatenated in rank order, on every rank.

``buf`` holds the whole result; on entry only this rank's block
``buf[offsets[rank]:offsets[rank+1]]`` is filled. Blocks may differ in size.
Costs for n bytes gathered in total on p ranks (Thakur, Rabenseifner & Gropp
2005, sec. 4.1):

    naive               gather to rank 0 ((p-1) alpha + (p-1)/p n beta), then a linear
                        broadcast of all n bytes ((p-1)(alpha + n beta))
    ring                (p-1) alpha + (p-1)/p n beta
    recursive_doubling  lg p alpha + (p-1)/p n beta   (p a power of two; otherwise two
                        extra steps fold ranks q..p-1 onto 0..p-q-1 and back)
    bruck               ceil(lg p) alpha + (p-1)/p n beta, any p

Every rank ends with identical bits: the blocks are copied, never combined.
"""
import numpy as np

from .blocks import Fold, block, span


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


def ring_blocks(ch, buf, offsets, me, real):
    """Ring allgather over virtual indices: index ``me`` owns block ``me``.

    In step s every rank passes the block it received last (its own block first)
    to its right neighbour: p-1 steps, each block sent p-1 times in total.
    ``real`` maps a virtual index to the rank number.
    """
    p = ch.size
    right, left = real((me + 1) % p), real((me - 1) % p)
    for s in range(p - 1):
        ch.step()
        ch.sendrecv(block(buf, offsets, (me - s) % p), right,
                    block(buf, offsets, (me - s - 1) % p), left)
    return buf


def ring(ch, buf, offsets):
    """Ring allgather: p-1 steps to the right-hand neighbour."""
    return ring_blocks(ch, buf, offsets, ch.rank, lambda r: r)


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
    fold = Fold(ch.size, offsets)
    rank = ch.rank
    if fold.q < fold.p:
        ch.step()  # fold in: extras hand their block to their partner
    if fold.is_extra(rank):
        ch.send(block(buf, offsets, rank), fold.partner(rank))
    elif fold.partner(rank) is not None:
        ch.recv(block(buf, offsets, fold.partner(rank)), fold.partner(rank))
    if not fold.is_extra(rank):
        slots = doubling_slots(ch, fold.to_slots(buf), fold.slot_offsets, fold.q)
        fold.from_slots(slots, buf)
    else:
        ch.steps += fold.q.bit_length() - 1  # the rounds this rank sits out
    if fold.q < fold.p:
        ch.step()  # fold out: partners send the whole result back
    if fold.is_extra(rank):
        ch.recv(buf, fold.partner(rank))
    elif fold.partner(rank) is not None:
        ch.send(buf, fold.partner(rank))
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
    work = np.empty_like(buf)
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
