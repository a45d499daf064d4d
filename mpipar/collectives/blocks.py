"""Block bookkeeping shared by the algorithms: splits, reduction ops, non-power-of-two folding.

Blocks are contiguous runs of a flat buffer described by ``offsets`` (length p+1):
block j is ``buf[offsets[j]:offsets[j+1]]``. ``split_offsets`` cuts n elements the
way ``np.array_split`` does (the first n mod p blocks one element longer).
"""
import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

OPS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}


def split_offsets(n, p):
    """Offsets of ``np.array_split(range(n), p)``: p blocks, sizes differ by at most one."""
    base, extra = divmod(n, p)
    offsets = [0]
    for j in range(p):
        offsets.append(offsets[-1] + base + (1 if j < extra else 0))
    return offsets


def split(n, p, r):
    """The slice of range(n) that shard r of p owns (``np.array_split`` sizes)."""
    base, extra = divmod(n, p)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def block(buf, offsets, j):
    """View of block j of ``buf``."""
    return buf[offsets[j]:offsets[j + 1]]


def span(buf, offsets, lo, hi):
    """View of blocks lo..hi-1 of ``buf`` (contiguous because blocks are)."""
    return buf[offsets[lo]:offsets[hi]]


def combine(op, left, right, out):
    """out = left (op) right, elementwise.

    Callers always pass the lower rank's data as ``left``: two ranks that combine
    the same pair of operands then evaluate the very same expression and get the
    same bits, even for ops where operand order shows in the result (the sign of
    zero in max/min). 16-bit floats are combined in float32 and rounded back once
    per combine -- bfloat16 explicitly, float16 because that is how NumPy's half
    loops work.
    """
    ufunc = OPS[op]
    if out.dtype == BFLOAT16:
        out[...] = ufunc(left.astype(np.float32), right.astype(np.float32)).astype(BFLOAT16)
    else:
        ufunc(left, right, out=out)
    return out


def pow2_floor(p):
    """The largest power of two q <= p."""
    return 1 << (p.bit_length() - 1)


class Fold:
    """Fold p ranks onto q = 2^floor(lg p) for the recursive-doubling/halving algorithms.

    Ranks q..p-1 ("extras") hand their data to rank r - q before the power-of-two
    phase and get the result back after it -- two extra steps, the standard fix
    (Thakur, Rabenseifner & Gropp 2005, sec. 4). During the phase, rank i < q owns
    *slot* i: block i followed by block i+q when that rank exists. ``to_slots``
    lays a buffer out slot by slot so every slot range is contiguous.
    """

    def __init__(self, p, offsets):
        self.p = p
        self.q = pow2_floor(p)
        self.order = []  # block indices in slot order
        slot_sizes = []
        for i in range(self.q):
            members = [i] + ([i + self.q] if i + self.q < p else [])
            self.order += members
            slot_sizes.append(sum(offsets[j + 1] - offsets[j] for j in members))
        self.slot_offsets = [0]
        for s in slot_sizes:
            self.slot_offsets.append(self.slot_offsets[-1] + s)
        self.offsets = offsets

    def is_extra(self, rank):
        return rank >= self.q

    def partner(self, rank):
        """The rank that stands in for an extra, or the extra a low rank stands in for."""
        if rank >= self.q:
            return rank - self.q
        return rank + self.q if rank + self.q < self.p else None

    def to_slots(self, buf):
        return np.concatenate([block(buf, self.offsets, j) for j in self.order]) \
            if self.p > 1 else buf.copy()

    def from_slots(self, slotbuf, out):
        pos = 0
        for j in self.order:
            size = self.offsets[j + 1] - self.offsets[j]
            out[self.offsets[j]:self.offsets[j + 1]] = slotbuf[pos:pos + size]
            pos += size
        return out
