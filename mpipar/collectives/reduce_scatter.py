"""Reduce-scatter algorithms: rank r gets block r of the elementwise reduction.

``x`` is this rank's whole input (a private copy the algorithm may overwrite; ring only
reads it, and gets the caller's array);
block j is ``x[offsets[j]:offsets[j+1]]``. Costs for an n-byte input on p ranks
(Thakur, Rabenseifner & Gropp 2005, sec. 4.3; gamma = seconds per byte reduced):

    naive               reduce all of x at rank 0 ((p-1)(alpha + n beta + n gamma)),
                        then send block r to rank r ((p-1) alpha + (p-1)/p n beta)
    ring                (p-1) alpha + (p-1)/p n beta + (p-1)/p n gamma
    recursive_halving   lg p alpha + (p-1)/p n (beta + gamma)   (p a power of two;
                        otherwise fold ranks q..p-1 in first: + alpha + n (beta + gamma),
                        and send their block out last: + alpha + n/p beta)

Floating-point sums are reduced in a different order by each algorithm, so they
differ in the last bits; every order satisfies |computed - exact| <= (p-1) u sum|x_i|
(Higham 2002, eq. 4.4, to first order in the unit roundoff u).
"""
import numpy as np

from ..measure.cost_model import Algorithm, floor_lg, folds, share
from .blocks import Fold, block, combine, from_wire, pow2_floor, ring_step, span, to_wire, wire_dtype


def naive(ch, x, offsets, op):
    """Rank 0 receives every input, reduces them in rank order, and sends each block out."""
    p, rank = ch.size, ch.rank
    if ch.size == 1:
        return x.copy()
    ch.step()
    if rank == 0:
        incoming = ch.scratch(x.size, x.dtype)
        for r in range(1, p):
            ch.recv(incoming, r)
            combine(op, x, incoming, out=x)  # ((x0 + x1) + x2) + ...
    else:
        ch.send(x, 0)
    ch.step()
    if rank == 0:
        for r in range(1, p):
            ch.send(block(x, offsets, r), r)
        return block(x, offsets, 0).copy()
    out = np.empty_like(block(x, offsets, rank))
    ch.recv(out, 0)
    return out


def ring_in_place(ch, x, offsets, op, wire=None):
    """Ring reduce-scatter, leaving block r reduced in place in ``x`` on rank r.

    In step s rank r sends its partial result of block (r-s-1) mod p to the right
    and adds the left neighbour's partial of block (r-s-2) mod p to its own data.
    Block b starts at rank b+1 and travels once round the ring, ending at rank b.
    With a ``wire`` dtype every partial travels rounded to it and is added in x's
    dtype (lowp.py's per-hop rounding).
    """
    p, rank = ch.size, ch.rank
    right, left = (rank + 1) % p, (rank - 1) % p
    blocks = [block(x, offsets, j) for j in range(p)]  # views, cut once
    incoming = ch.scratch(max(b.size for b in blocks), wire_dtype(wire, x.dtype))
    parts = [incoming[:b.size] for b in blocks]  # where block j's partial arrives
    for s in range(p - 1):
        ch.step()
        send_b, recv_b = ring_step(p, rank, s, "reduce_scatter")
        mine, part = blocks[recv_b], parts[recv_b]
        ch.sendrecv(to_wire(blocks[send_b], wire), right, part, left)
        if mine.size:  # partial from earlier ranks of the ring, then ours
            combine(op, from_wire(part, x.dtype), mine, out=mine)
    return x


def ring(ch, x, offsets, op):
    """Ring reduce-scatter that only reads ``x``: the steps of ``ring_in_place``, the same
    combines in the same order, but each partial result goes into a kept buffer instead of
    into x, and the last (block r, complete) into the new array returned. So the call needs
    no private copy of x -- at 16 MiB on 2 ranks that copy and the result's copy out of it
    took 3.1 of the call's 5.9 ms.
    """
    p, rank = ch.size, ch.rank
    if p == 1:
        return x.copy()
    right, left = (rank + 1) % p, (rank - 1) % p
    blocks = [block(x, offsets, j) for j in range(p)]
    largest = max(b.size for b in blocks)
    incoming, partial = ch.scratch(largest, x.dtype), ch.scratch(largest, x.dtype, "partial")
    sending = blocks[(rank - 1) % p]  # step 0 sends this rank's own data of block r - 1
    for s in range(p - 1):
        ch.step()
        recv_b = ring_step(p, rank, s, "reduce_scatter")[1]
        mine, part = blocks[recv_b], incoming[:blocks[recv_b].size]
        ch.sendrecv(sending, right, part, left)
        # the blocking sendrecv has sent the old partial: its buffer takes the new one
        sending = np.empty_like(mine) if s == p - 2 else partial[:mine.size]
        combine(op, part, mine, out=sending)  # partial from earlier ranks of the ring, then ours
    return sending


def halving_slots(ch, slotbuf, slot_offsets, q, op):
    """Recursive halving among ranks 0..q-1 (q a power of two) on a slot-ordered buffer.

    With distance d = q/2, q/4, ..., 1, rank i keeps the half of its current slot
    range that contains slot i, sends the other half to rank i XOR d and adds
    what that rank sends back. After lg q steps rank i holds slot i reduced.
    """
    i, lo, hi = ch.rank, 0, q
    d = q >> 1
    incoming = ch.scratch(slotbuf.size, slotbuf.dtype)
    while d:
        ch.step()
        mid = lo + d
        keep, give = ((lo, mid), (mid, hi)) if i < mid else ((mid, hi), (lo, mid))
        mine = span(slotbuf, slot_offsets, *keep)
        theirs = incoming[:mine.size]
        ch.sendrecv(span(slotbuf, slot_offsets, *give), i ^ d, theirs, i ^ d)
        left, right = (mine, theirs) if i < (i ^ d) else (theirs, mine)
        combine(op, left, right, out=mine)
        lo, hi = keep
        d >>= 1
    return slotbuf


def recursive_halving(ch, x, offsets, op):
    """Recursive halving; for p not a power of two, fold the extra ranks in, then out."""
    fold, rank = Fold(ch.size, offsets), ch.rank
    fold.reduce_in(ch, x, op)
    out = np.empty_like(block(x, offsets, rank))
    extras_block = None  # on a rank that stands in for an extra: that rank's block
    if not fold.is_extra(rank):
        slots = halving_slots(ch, fold.to_slots(x), fold.slot_offsets, fold.q, op)
        mine = block(slots, fold.slot_offsets, rank)  # block rank, then block rank+q
        out[...] = mine[:out.size]
        extras_block = mine[out.size:]
    fold.sit_out(ch)
    fold.fold_out(ch, extras_block, out)
    return out


# name -> the function, and its cost in seconds on p ranks for an n-byte input: the formulas
# of the table at the top (q = 2^floor(lg p); folds(p) is 1 when q < p)
ALGORITHMS = {
    "naive": Algorithm(naive, lambda p, n, alpha, beta, gamma:
                       (p - 1) * (alpha + n * beta + n * gamma) + (p - 1) * alpha + share(p) * n * beta,
                       alone=True),
    "ring": Algorithm(ring, lambda p, n, alpha, beta, gamma:
                      (p - 1) * alpha + share(p) * n * (beta + gamma), reads_input=True),
    "recursive_halving": Algorithm(recursive_halving, lambda p, n, alpha, beta, gamma:
                                   floor_lg(p) * alpha + share(pow2_floor(p)) * n * (beta + gamma)
                                   + folds(p) * (2 * alpha + n * (beta + gamma) + n / p * beta)),
}
