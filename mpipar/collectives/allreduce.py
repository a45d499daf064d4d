"""Allreduce algorithms: the elementwise reduction of every rank's x, on every rank.

``x`` is this rank's input (a private copy the algorithm overwrites with the
result). Costs for n bytes on p ranks (Thakur, Rabenseifner & Gropp 2005, sec. 4.4):

    naive               reduce at rank 0, linear broadcast:
                        2(p-1) alpha + 2(p-1) n beta + (p-1) n gamma  (all at rank 0)
    tree                binomial reduce + binomial broadcast:
                        2 ceil(lg p)(alpha + n beta) + ceil(lg p) n gamma
    recursive_doubling  lg p (alpha + n beta + n gamma)
    ring                reduce-scatter then allgather, both rings:
                        2(p-1) alpha + 2(p-1)/p n beta + (p-1)/p n gamma
    rabenseifner        recursive halving then recursive doubling:
                        2 lg p alpha + 2(p-1)/p n beta + (p-1)/p n gamma
    lower bound         2(p-1)/p n beta: every byte but a 1/p share must leave each rank
                        and come back reduced.

For p not a power of two, recursive_doubling and rabenseifner fold ranks q..p-1
onto 0..p-q-1 first (+ alpha + n beta + n gamma) and send them the result last
(+ alpha + n beta), q = 2^floor(lg p).

Why every rank ends with identical bits although floating-point addition is not
associative: in naive, tree, ring and rabenseifner each element is reduced on
exactly one rank and then only copied; in recursive_doubling both partners of an
exchange combine the same two operands, in the same order (lower rank first).
"""
import numpy as np

from . import allgather, broadcast, reduce_scatter
from .blocks import Fold, combine, split_offsets


def naive(ch, x, op):
    """Everyone sends to rank 0, which reduces in rank order and sends the result to each."""
    p, rank = ch.size, ch.rank
    if ch.size == 1:
        return x
    ch.step()
    if rank == 0:
        incoming = np.empty_like(x)
        for r in range(1, p):
            ch.recv(incoming, r)
            combine(op, x, incoming, out=x)
    else:
        ch.send(x, 0)
    return broadcast.naive(ch, x, 0)


def tree(ch, x, op):
    """Binomial-tree reduce to rank 0, then binomial-tree broadcast from it.

    Reduce: in round k a rank with bit k set sends its partial result to
    rank - 2^k and drops out; the receiver holds ranks [r, r + 2^k) and adds the
    sender's [r + 2^k, r + 2^(k+1)) on the right.
    """
    p, rank = ch.size, ch.rank
    incoming = np.empty_like(x)
    mask, active = 1, True
    while mask < p:
        ch.step()
        if active and rank & mask:
            ch.send(x, rank - mask)
            active = False
        elif active and rank + mask < p:
            ch.recv(incoming, rank + mask)
            combine(op, x, incoming, out=x)
        mask <<= 1
    return broadcast.binomial(ch, x, 0)


def _fold_out(ch, fold, x):
    """Ranks that stood in for an extra send it the finished result."""
    if fold.q == fold.p:
        return x
    ch.step()
    if fold.is_extra(ch.rank):
        ch.recv(x, fold.partner(ch.rank))
    elif fold.partner(ch.rank) is not None:
        ch.send(x, fold.partner(ch.rank))
    return x


def recursive_doubling(ch, x, op):
    """Exchange the whole vector with rank XOR 2^k for k = 0, 1, ..., lg q - 1."""
    fold, rank = Fold(ch.size, split_offsets(x.size, ch.size)), ch.rank
    reduce_scatter.fold_in(ch, fold, x, op)
    if fold.is_extra(rank):
        ch.steps += fold.q.bit_length() - 1
    else:
        incoming = np.empty_like(x)
        d = 1
        while d < fold.q:
            ch.step()
            ch.sendrecv(x, rank ^ d, incoming, rank ^ d)
            left, right = (x, incoming) if rank < (rank ^ d) else (incoming, x)
            combine(op, left, right, out=x)
            d <<= 1
    return _fold_out(ch, fold, x)


def ring(ch, x, op):
    """Ring reduce-scatter leaves block r reduced on rank r; a ring allgather spreads them."""
    offsets = split_offsets(x.size, ch.size)
    reduce_scatter.ring_blocks(ch, x, offsets, op)
    return allgather.ring(ch, x, offsets)


def rabenseifner(ch, x, op):
    """Rabenseifner (2004): recursive-halving reduce-scatter, recursive-doubling allgather."""
    fold, rank = Fold(ch.size, split_offsets(x.size, ch.size)), ch.rank
    reduce_scatter.fold_in(ch, fold, x, op)
    if fold.is_extra(rank):
        ch.steps += 2 * (fold.q.bit_length() - 1)
    else:
        slots = fold.to_slots(x)
        reduce_scatter.halving_slots(ch, slots, fold.slot_offsets, fold.q, op)
        allgather.doubling_slots(ch, slots, fold.slot_offsets, fold.q)
        fold.from_slots(slots, x)
    return _fold_out(ch, fold, x)
