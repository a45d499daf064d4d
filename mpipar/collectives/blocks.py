"""Block arithmetic shared by the algorithms: splits, ring steps, reductions, folding, wire casts.

Blocks are contiguous runs of a flat buffer described by ``offsets`` (length p+1):
block j is ``buf[offsets[j]:offsets[j+1]]``. ``split_offsets`` cuts n elements the
way ``np.array_split`` does (the first n mod p blocks one element longer). This is
the only place that says which block a rank sends when: ``ring_step`` for the
rings, :class:`Fold` for the algorithms that need a power of two.
"""
from fractions import Fraction
import functools

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

#: op name -> ufunc. max and min are np.maximum and np.minimum, so a NaN on any rank makes
#: the element NaN on every rank, in every algorithm (MPI libraries' MPI_MAX need not).
REDUCTIONS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}


def split_offsets(n, p):
    """Offsets of ``np.array_split(range(n), p)``: p blocks, sizes differ by at most one."""
    base, extra = divmod(n, p)
    return [j * base + (j if j < extra else extra) for j in range(p + 1)]


def split(n, p, r):
    """The slice of range(n) that shard r of p owns (``np.array_split`` sizes)."""
    base, extra = divmod(n, p)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def weighted_split_offsets(n, fixed, per_unit):
    """Offsets cutting n units into len(fixed) blocks so that the loads ``fixed[r] + per_unit
    * size_r`` are as even as whole units allow (the MLP columns beside uneven attention heads).

    Water-filling, in exact fractions: every shard is filled to one level L, s_r = (L -
    fixed[r]) / per_unit, with L where the s_r add up to n; a shard whose fixed load is above
    L gets nothing and L is found again without it. Whole units: the floor of every s_r, and
    the units left over one each to the largest fractional parts, ties to the lower rank --
    so equal fixed loads give ``split_offsets`` (``np.array_split``'s sizes).
    """
    filled = range(len(fixed))
    while True:
        level = Fraction(n * per_unit + sum(fixed[r] for r in filled), len(filled))
        if all(fixed[r] <= level for r in filled):
            break
        filled = [r for r in filled if fixed[r] <= level]
    ideal = [(level - fixed[r]) / per_unit if r in filled else Fraction(0) for r in range(len(fixed))]
    sizes = [int(s) for s in ideal]
    by_remainder = sorted(range(len(fixed)), key=lambda r: (sizes[r] - ideal[r], r))
    for r in by_remainder[:n - sum(sizes)]:
        sizes[r] += 1
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return offsets


def block(buf, offsets, j):
    """View of block j of ``buf``."""
    return buf[offsets[j]:offsets[j + 1]]


def span(buf, offsets, lo, hi):
    """View of blocks lo..hi-1 of ``buf`` (contiguous because blocks are)."""
    return buf[offsets[lo]:offsets[hi]]


def ring_step(p, me, s, phase):
    """(block sent to the right, block received from the left) at step s = 0..p-2 of a ring.

    ``me`` is the position on the ring (the rank, or a rank relative to a root).
    ``"reduce_scatter"``: send the partial result of block me-s-1, receive the left
    neighbour's partial of block me-s-2 and add it in; block b starts at position
    b+1 and, after p-1 hops, is complete at position b. ``"allgather"``: send the
    block received last (at s = 0 this position's own block me), receive block
    me-s-1. The same arithmetic shifted by one (Thakur, Rabenseifner & Gropp 2005,
    sec. 4.1 and 4.3).
    """
    lag = 1 if phase == "reduce_scatter" else 0
    return (me - s - lag) % p, (me - s - lag - 1) % p


def combine(op, left, right, out):
    """out = left (op) right, elementwise.

    Callers always pass the lower rank's data as ``left``: two ranks that combine
    the same pair of operands then evaluate the very same expression and get the
    same bits, even for ops where operand order shows in the result (the sign of
    zero in max/min). 16-bit floats are combined in float32 and rounded back once
    per combine -- bfloat16 explicitly, float16 because that is how NumPy's half
    loops work.
    """
    ufunc = REDUCTIONS[op]
    if out.dtype == BFLOAT16:
        out[...] = ufunc(left.astype(np.float32), right.astype(np.float32)).astype(BFLOAT16)
    else:
        ufunc(left, right, out=out)
    return out


# --- a 16-bit wire (lowp.py): partial results travel as ``wire``, are reduced in float32 ---

def wire_dtype(wire, dtype):
    """The dtype messages travel as: ``wire``, or the data's own ``dtype`` without one."""
    return dtype if wire is None else np.dtype(wire)


def to_wire(a, wire):
    """``a`` as it travels: rounded to the ``wire`` dtype, or ``a`` itself (no copy) if None."""
    return a if wire is None else a.astype(wire)


def from_wire(a, dtype):
    """Received ``a`` in the working ``dtype`` (exact widening; no copy if it already is)."""
    return a if a.dtype == dtype else a.astype(dtype)


# --- p ranks folded onto a power of two ------------------------------------------------------

def pow2_floor(p):
    """The largest power of two q <= p."""
    return 1 << (p.bit_length() - 1)


class Fold:
    """Fold p ranks onto q = 2^floor(lg p) for the recursive-doubling/halving algorithms.

    Ranks q..p-1 ("extras") hand their data to rank r - q before the power-of-two
    phase and get the result back after it -- two extra steps, the standard fix
    (Thakur, Rabenseifner & Gropp 2005, sec. 4). During the phase, rank i < q owns
    *slot* i: block i followed by block i+q when that rank exists. ``to_slots``
    lays a buffer out slot by slot so every slot range is contiguous. ``offsets`` (the
    p blocks) are needed only by the slot methods: recursive doubling of a whole vector
    passes none.
    """

    def __init__(self, p, offsets=None):
        self.p = p
        self.q = pow2_floor(p)
        self.rounds = self.q.bit_length() - 1  #: lg q, the steps of one power-of-two phase
        self.offsets = offsets

    @functools.cached_property
    def order(self):
        """Block indices in slot order (computed when first needed: recursive doubling
        of a whole vector never needs it)."""
        return [j for i in range(self.q) for j in ([i, i + self.q] if i + self.q < self.p else [i])]

    @functools.cached_property
    def slot_offsets(self):
        """Offsets of the q slots in a slot-ordered buffer."""
        out = [0]
        for i in range(self.q):
            out.append(out[-1] + sum(self.offsets[j + 1] - self.offsets[j]
                                     for j in ((i, i + self.q) if i + self.q < self.p else (i,))))
        return out

    def is_extra(self, rank):
        return rank >= self.q

    def partner(self, rank):
        """The rank that stands in for an extra, or the extra a low rank stands in for."""
        if rank >= self.q:
            return rank - self.q
        return rank + self.q if rank + self.q < self.p else None

    def stands_in(self, rank):
        """True for a rank below q that has an extra to stand in for."""
        return rank + self.q < self.p

    def fold_in(self, ch, send, recv):
        """Step one (if p is not a power of two): every extra sends ``send`` to rank - q,
        which receives it into ``recv``. True on the ranks that received."""
        return self._hand_over(ch, send, recv, extras_send=True)

    def fold_out(self, ch, send, recv):
        """The last step (if p is not a power of two): rank r - q sends ``send`` to the
        extra r, which receives it into ``recv``. True on the ranks that received."""
        return self._hand_over(ch, send, recv, extras_send=False)

    def _hand_over(self, ch, send, recv, extras_send):
        if self.q == self.p:
            return False
        rank, partner = ch.rank, self.partner(ch.rank)
        ch.step()
        if partner is None:
            return False
        if self.is_extra(rank) == extras_send:
            ch.send(send, partner)
            return False
        ch.recv(recv, partner)
        return True

    def reduce_in(self, ch, x, op, wire=None):
        """Fold in a whole vector: extras send ``x``, rank r - q combines it on the right of
        its own (the lower rank first). With a ``wire`` both operands are rounded to it."""
        if self.q == self.p:
            return x
        sent = to_wire(x, wire)
        incoming = ch.scratch(sent.size, sent.dtype, "fold") if self.stands_in(ch.rank) else None
        if self.fold_in(ch, sent, incoming):
            combine(op, from_wire(sent, x.dtype), from_wire(incoming, x.dtype), out=x)
        return x

    def sit_out(self, ch, phases=1):
        """An extra counts the ``phases`` power-of-two phases it sits out, so that every
        rank reports the same number of steps."""
        if self.is_extra(ch.rank):
            ch.steps += phases * self.rounds

    def to_slots(self, buf):
        """``buf`` laid out slot by slot: ``buf`` itself when p is a power of two (the slot
        order is then the block order), else a new buffer."""
        if self.q == self.p:
            return buf
        return np.concatenate([block(buf, self.offsets, j) for j in self.order])

    def from_slots(self, slotbuf, out):
        if slotbuf is out:
            return out
        pos = 0
        for j in self.order:
            size = self.offsets[j + 1] - self.offsets[j]
            out[self.offsets[j]:self.offsets[j + 1]] = slotbuf[pos:pos + size]
            pos += size
        return out
