"""Every rank's arguments agreed on before any data moves: one fixed-size allreduce.

A collective whose ranks disagree on the dtype, the shape, the op or the
algorithm would deadlock or silently compute garbage, so the collectives
compare every rank's call first (``check=True``). The comparison is one
MPI allreduce of a fixed-size signature, whatever p is:

    v = [ h, -h ]      reduced with MPI.MIN: [min h, -(max h)]

h is a 62-bit hash (BLAKE2b) of the fields every rank must agree on (the
collective, algorithm, op, dtype, shape, axis, root) and of the one number that
may differ (allgather's length n), or -1 on a rank whose arguments have a
problem of their own. MIN of h and of -h give min and max at once, so after
the one reduction every rank knows whether all hashes were equal (min == max)
and whether any rank had a problem (min = -1) -- in a message of 16 bytes
whatever p is, with no pickling. (Two elements, not six: MPI libraries switch
to a two-phase allreduce once the count reaches p, which costs more.) If the
hashes differ but nobody had a problem, allgather's lengths may simply differ:
one Allgather of (hash without n, n) tells, and gives the lengths. Only when a
call is really wrong does every rank gather the full table of (problem,
fields, info) -- the slow, pickled ``allgather`` -- to name the culprit rank in
the same ``ValueError`` everywhere. A hash collision (2^-62 per pair of distinct
calls) would let a mismatch through; it cannot make a good call fail.

No rank raises before the agreement: a rank's own problem (an unknown
algorithm, ``op=["sum"]``, ``axis=1.0``) is only a message until every rank
has seen every rank's flag.
"""
import hashlib

from mpi4py import MPI
import numpy as np

from ..measure.op_profile import timed

_MASK = (1 << 62) - 1  # |h| < 2^62, so -h never overflows an int64


_SEEN = {}  # fields -> signature_hash(fields): a program makes the same few calls again and again


def signature_hash(fields):
    """A hash of ``fields`` (a tuple of plain values) that is the same in every process.

    Python's ``hash`` of a str is salted per process (PYTHONHASHSEED), so the
    ranks could not compare it; BLAKE2b of the repr can be. Remembered per
    distinct ``fields`` (a dict look-up costs a tenth of the repr and the digest)."""
    try:
        return _SEEN[fields]
    except KeyError:
        pass
    except TypeError:  # unhashable fields (a bad call's): no memo
        return _digest(fields)
    if len(_SEEN) > 4096:
        _SEEN.clear()
    h = _SEEN[fields] = _digest(fields)
    return h


def _digest(fields):
    text = repr(_canonical(fields)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & _MASK


def _canonical(v):
    """NumPy integers as Python ints, so that root=np.int64(1) and root=1 hash alike
    (they are equal, so they share a memo entry too)."""
    if isinstance(v, tuple):
        return tuple(_canonical(e) for e in v)
    return int(v) if isinstance(v, np.integer) else v


@timed("agreement")
def agree(comm, name, problem, check, info=0, **fields):
    """Raise the same ValueError on every rank if any rank's call is bad or differs.

    ``fields`` must be equal on every rank; ``info`` (an int) may differ.
    Returns every rank's ``info`` as a list (or None without ``check``, where a
    local problem raises at once and nothing is compared).
    """
    if not check:
        if problem:
            raise ValueError(f"{name}: {problem}")
        return None
    p = comm.Get_size()
    if p == 1:
        if problem:
            raise ValueError(f"{name}: rank 0: {problem}")
        return [info]
    key = (name, *fields.items())
    h = -1 if problem else signature_hash((key, info))  # -1: below every hash
    low = np.empty(2, np.int64)
    comm.Allreduce(np.array([h, -h], np.int64), low, op=MPI.MIN)
    least, minus_most = low.tolist()  # Python ints: cheaper to compare than NumPy scalars
    if least == -minus_most and least >= 0:  # one hash everywhere, and it is not -1
        return [info] * p  # the common case: one message of 16 bytes, no pickling
    if least >= 0 and isinstance(info, int):  # nobody is bad; maybe only the lengths differ
        both = np.empty((p, 2), np.int64)
        comm.Allgather(np.array([signature_hash(key), info], np.int64), both)
        if (both[:, 0] == both[0, 0]).all():
            return both[:, 1].tolist()
    return _culprit(comm, name, problem, fields, info)


def _culprit(comm, name, problem, fields, info):
    """The slow path: gather every rank's call and raise the error that names who differs."""
    plain = {k: v if isinstance(v, (str, int, tuple, type(None))) else repr(v)
             for k, v in fields.items()}
    table = comm.allgather((problem, plain, info))
    for r, (prob, _, _) in enumerate(table):
        if prob:
            raise ValueError(f"{name}: rank {r}: {prob}")
    for key in fields:
        values = [f[key] for _, f, _ in table]
        if any(v != values[0] for v in values):
            seen = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ValueError(f"{name}: ranks disagree on {key} ({seen})")
    # equal fields but unequal hashes: impossible unless repr differs between processes
    raise ValueError(f"{name}: ranks disagree on their arguments (signatures differ)")
