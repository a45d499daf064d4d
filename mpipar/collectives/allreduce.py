"""Allreduce algorithms: the elementwise reduction of every rank's x, on every rank.

``x`` is this rank's input (a private copy the algorithm overwrites with the
result). Costs for n bytes on p ranks (Thakur, Rabenseifner & Gropp 2005, sec. 4.4):

    naive               reduce at rank 0, linear broadcast:
                        2(p-1) alpha + 2(p-1) n beta + (p-1) n gamma  (all at rank 0)
    tree                binomial reduce + binomial broadcast:
                        2 ceil(lg p)(alpha + n beta) + ceil(lg p) n gamma
    recursive_doubling  lg p (alpha + n beta + n gamma)
    recursive_multiplying  k-way exchanges, p = k_1 ... k_m (multiplying.py):
                        sum_j (k_j - 1)(alpha + n beta + n gamma)
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
exchange combine the same two operands, in the same order (lower rank first), and in
recursive_multiplying all members of a group reduce the same k operands in member order.

ring and recursive_doubling also run with a 16-bit ``wire`` (lowp.py): what
travels is rounded to it, every combine happens in x's dtype (float32).
"""

from ..measure.cost_model import Algorithm, ceil_lg, floor_lg, folds, share
from . import allgather, broadcast, multiplying, reduce_scatter
from .blocks import Fold, combine, from_wire, pow2_floor, split_offsets, to_wire, wire_dtype
from .multiplying import recursive_multiplying  # noqa: F401  (the table's functions live here)


def naive(ch, x, op):
    """Everyone sends to rank 0, which reduces in rank order and sends the result to each."""
    p, rank = ch.size, ch.rank
    if ch.size == 1:
        return x
    ch.step()
    if rank == 0:
        incoming = ch.scratch(x.size, x.dtype)
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
    incoming = ch.scratch(x.size, x.dtype) if rank % 2 == 0 else None  # odd ranks only send
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


def recursive_doubling(ch, x, op, wire=None):
    """Exchange the whole vector with rank XOR 2^k for k = 0, 1, ..., lg q - 1.

    With a ``wire`` both partners round their own partial result before the
    exchange and add the two rounded operands; the result is rounded once more.
    """
    fold, rank = Fold(ch.size), ch.rank
    fold.reduce_in(ch, x, op, wire)
    if not fold.is_extra(rank):
        incoming = ch.scratch(x.size, wire_dtype(wire, x.dtype))
        d = 1
        while d < fold.q:
            ch.step()
            mine = to_wire(x, wire)
            ch.sendrecv(mine, rank ^ d, incoming, rank ^ d)
            left, right = (mine, incoming) if rank < (rank ^ d) else (incoming, mine)
            combine(op, from_wire(left, x.dtype), from_wire(right, x.dtype), out=x)
            d <<= 1
    fold.sit_out(ch)
    result = to_wire(x, wire)
    fold.fold_out(ch, result, result)  # ranks that stood in for an extra send it the result
    return from_wire(result, x.dtype)


def ring(ch, x, op, wire=None, rounding="per_hop"):
    """Ring reduce-scatter leaves block r reduced on rank r; a ring allgather spreads them.

    With a ``wire``: ``rounding="per_hop"`` rounds every partial result that travels
    in the reduce-scatter; ``"once"`` runs the reduce-scatter in x's dtype. Either
    way each rank rounds its finished block once and the allgather copies 16-bit blocks.
    """
    offsets = split_offsets(x.size, ch.size)
    reduce_scatter.ring_in_place(ch, x, offsets, op, wire if rounding == "per_hop" else None)
    return from_wire(allgather.ring(ch, to_wire(x, wire), offsets), x.dtype)


def rabenseifner(ch, x, op):
    """Rabenseifner (2004): recursive-halving reduce-scatter, recursive-doubling allgather."""
    fold, rank = Fold(ch.size, split_offsets(x.size, ch.size)), ch.rank
    fold.reduce_in(ch, x, op)
    if not fold.is_extra(rank):
        slots = fold.to_slots(x)
        reduce_scatter.halving_slots(ch, slots, fold.slot_offsets, fold.q, op)
        allgather.doubling_slots(ch, slots, fold.slot_offsets, fold.q)
        fold.from_slots(slots, x)
    fold.sit_out(ch, phases=2)
    fold.fold_out(ch, x, x)
    return x


# name -> the function, and its cost in seconds on p ranks for an n-byte input: the formulas
# of the table at the top (q = 2^floor(lg p); folds(p) is 1 when q < p)
ALGORITHMS = {
    "naive": Algorithm(naive, lambda p, n, alpha, beta, gamma:
                       2 * (p - 1) * (alpha + n * beta) + (p - 1) * n * gamma, alone=True),
    "tree": Algorithm(tree, lambda p, n, alpha, beta, gamma:
                      2 * ceil_lg(p) * (alpha + n * beta) + ceil_lg(p) * n * gamma, alone=True),
    "recursive_doubling": Algorithm(recursive_doubling, lambda p, n, alpha, beta, gamma:
                                    floor_lg(p) * (alpha + n * beta + n * gamma)
                                    + folds(p) * (2 * alpha + 2 * n * beta + n * gamma)),
    "recursive_multiplying": Algorithm(recursive_multiplying, multiplying.cost),
    "ring": Algorithm(ring, lambda p, n, alpha, beta, gamma:
                      2 * (p - 1) * alpha + 2 * share(p) * n * beta + share(p) * n * gamma),
    "rabenseifner": Algorithm(rabenseifner, lambda p, n, alpha, beta, gamma:
                              2 * floor_lg(p) * alpha + 2 * share(pow2_floor(p)) * n * beta
                              + share(pow2_floor(p)) * n * gamma
                              + folds(p) * (2 * alpha + 2 * n * beta + n * gamma)),
}
