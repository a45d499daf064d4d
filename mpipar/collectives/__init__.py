"""Hand-written collectives on point-to-point MPI, each call recorded in the ledger.

    allreduce(comm, x, op="sum", algorithm="auto")        -> reduction of every rank's x
    allgather(comm, x, axis=0, algorithm="auto")          -> every rank's x, concatenated
    reduce_scatter(comm, x, axis=0, op="sum", algorithm="auto") -> block r of the reduction
    broadcast(comm, x, root=0, algorithm="auto")          -> root's x

The algorithms live beside this file: one file per collective, each ending with
its table ``ALGORITHMS`` (name -> function and cost formula), with the reason
every rank ends with identical bits; blocks.py holds the block arithmetic they
share, channel.py the counting point-to-point layer, lowp.py the 16-bit wires,
nonblocking.py the overlapped ring. ``ALGORITHMS`` here maps each collective to
its table. ``algorithm="mpi"``
calls the MPI library's own collective for side-by-side comparison; ``"auto"``
picks a hand-written algorithm for this p and message size, as MPI libraries do
with their thresholds: from a measured decision table (``python -m mpipar.bench
tune``; where it is looked for: tuning.py), else the one the :class:`CostModel`
predicts fastest.

Before any data moves, every rank's arguments are compared (``check=True``: one
MPI allreduce of a fixed-size signature, see checking.py): a bad or mismatched
call raises the same ``ValueError`` on every rank instead of deadlocking, and no
rank raises before that agreement. ``check=False`` -- for benchmarks of the bare
algorithm -- skips that message and with it everything that needs another rank's
arguments: that every rank names the same algorithm, op, dtype, shape, axis and root.
What remains: each rank's own arguments are checked (an unknown op, a bad axis) and
raise on that rank alone, and every blocking receive checks that its message filled
its buffer exactly (channel.py), so unequal lengths are an error, not a stale tail. A
mismatched op or algorithm with equal lengths is not caught: different answers on
different ranks.

dtypes: float16, float32, float64, int32, int64, bfloat16 (``ml_dtypes``). Data
travels as raw bytes; 16-bit floats are reduced in float32 (see ``combine``).
MPI has no 16-bit float reduction, so ``"mpi"`` reduces them as float32 and
rounds once: it moves twice the bytes.
"""
import math
import time

from mpi4py import MPI
import numpy as np

from ..measure import ledger
from ..measure.cost_model import CostModel
from . import allgather as _ag
from . import allreduce as _ar
from . import broadcast as _bc
from . import reduce_scatter as _rs
from . import scratch, tuning
from .blocks import BFLOAT16, REDUCTIONS, split_offsets
from .channel import Channel
from .checking import agree

DTYPES = [np.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64")] + [BFLOAT16]
MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN}
ALGORITHMS = {"allreduce": _ar.ALGORITHMS, "allgather": _ag.ALGORITHMS,
              "reduce_scatter": _rs.ALGORITHMS, "broadcast": _bc.ALGORITHMS}
_AUTO_MODEL = CostModel()
_DTYPE_SET = frozenset(DTYPES)
_SIXTEEN_BIT = frozenset((np.dtype(np.float16), BFLOAT16))  # floats MPI cannot reduce

__all__ = ["allreduce", "allgather", "reduce_scatter", "broadcast", "ALGORITHMS", "DTYPES"]


def allreduce(comm, x, op="sum", algorithm="auto", *, check=True):
    """Elementwise reduction of every rank's ``x``; a new array, bitwise equal on all ranks."""
    x, problem = _local_problems("allreduce", algorithm, x, op=op)
    if check or problem:
        agree(comm, "allreduce", problem, check, algorithm=algorithm, op=op,
              dtype=x.dtype.str, shape=x.shape)
    alg = _resolve(comm, "allreduce", algorithm, x.nbytes)
    if alg == "mpi":
        fn = lambda ch: _mpi_allreduce(comm, x, op)  # noqa: E731
    else:
        work = x.flatten()  # a private C-order copy the algorithm may overwrite
        fn = lambda ch: _ar.ALGORITHMS[alg].run(ch, work, op)  # noqa: E731
    out = _run(comm, "allreduce", alg, algorithm, x, x.nbytes, fn)
    return out if out.shape == x.shape else out.reshape(x.shape)


def allgather(comm, x, axis=0, algorithm="auto", *, check=True):
    """Concatenation of every rank's ``x`` along ``axis`` in rank order; lengths may differ."""
    x, problem = _local_problems("allgather", algorithm, x, axis=axis)
    ax = axis % x.ndim if x.ndim and not problem else 0
    rest = tuple(s for i, s in enumerate(x.shape) if i != ax)
    sigs = agree(comm, "allgather", problem, check, algorithm=algorithm, dtype=x.dtype.str,
                  axis=axis, other_dims=rest, info=x.shape[ax] if x.ndim else 0)
    p, rank = comm.Get_size(), comm.Get_rank()
    if sigs is not None:
        lengths = [int(n) for n in sigs]
    elif p == 1:
        lengths = [x.shape[ax]]
    else:  # unchecked: the lengths still have to be exchanged
        counts = np.zeros(p, np.int64)
        comm.Allgather(np.array([x.shape[ax]], np.int64), counts)
        lengths = counts.tolist()
    row = math.prod(rest)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n * row)
    total = np.empty(offsets[-1], x.dtype)
    front = x if ax == 0 else np.moveaxis(x, ax, 0)
    total[offsets[rank]:offsets[rank + 1]] = front.reshape(-1)
    alg = _resolve(comm, "allgather", algorithm, total.nbytes)
    if alg == "mpi":
        fn = lambda ch: _mpi_allgather(comm, total, offsets)  # noqa: E731
    else:
        fn = lambda ch: _ag.ALGORITHMS[alg].run(ch, total, offsets)  # noqa: E731
    out = _run(comm, "allgather", alg, algorithm, x, total.nbytes, fn).reshape((sum(lengths),) + rest)
    return out if ax == 0 else np.moveaxis(out, 0, ax)


def reduce_scatter(comm, x, axis=0, op="sum", algorithm="auto", *, check=True):
    """Block ``rank`` (as ``np.array_split(x, p, axis)`` cuts it) of the reduction of all x."""
    x, problem = _local_problems("reduce_scatter", algorithm, x, op=op, axis=axis)
    if check or problem:
        agree(comm, "reduce_scatter", problem, check, algorithm=algorithm, op=op,
              dtype=x.dtype.str, shape=x.shape, axis=axis)
    p, rank, ax = comm.Get_size(), comm.Get_rank(), axis % x.ndim
    moved = np.moveaxis(x, ax, 0) if ax else x  # moveaxis alone costs ~4 us
    row = math.prod(moved.shape[1:])
    offsets = [row * o for o in split_offsets(moved.shape[0], p)]
    alg = _resolve(comm, "reduce_scatter", algorithm, x.nbytes)
    if alg == "mpi" or _rs.ALGORITHMS[alg].reads_input:  # x itself where it is C-ordered
        work = np.ascontiguousarray(moved).reshape(-1)
    else:  # a private C-order copy the algorithm may overwrite
        work = np.array(moved, order="C", copy=True).reshape(-1)
    if alg == "mpi":
        fn = lambda ch: _mpi_reduce_scatter(comm, work, op, offsets)  # noqa: E731
    else:
        fn = lambda ch: _rs.ALGORITHMS[alg].run(ch, work, offsets, op)  # noqa: E731
    mine = _run(comm, "reduce_scatter", alg, algorithm, x, x.nbytes, fn)
    rows = split_offsets(moved.shape[0], p)
    mine = mine.reshape((rows[rank + 1] - rows[rank],) + moved.shape[1:])
    return np.moveaxis(mine, 0, ax) if ax else mine


def broadcast(comm, x, root=0, algorithm="auto", *, check=True):
    """Root's ``x`` on every rank; every rank passes an array of the same shape and dtype."""
    x, problem = _local_problems("broadcast", algorithm, x, root=root, p=comm.Get_size())
    if check or problem:
        agree(comm, "broadcast", problem, check, algorithm=algorithm, root=root,
              dtype=x.dtype.str, shape=x.shape)
    alg = _resolve(comm, "broadcast", algorithm, x.nbytes)
    work = x.flatten()
    if alg == "mpi":
        fn = lambda ch: (comm.Bcast([work, MPI.BYTE], root=root), work)[1]  # noqa: E731
    else:
        fn = lambda ch: _bc.ALGORITHMS[alg].run(ch, work, root)  # noqa: E731
    return _run(comm, "broadcast", alg, algorithm, x, x.nbytes, fn).reshape(x.shape)


# --- checking -------------------------------------------------------------------------------

def _local_problems(name, algorithm, x, op="sum", axis=None, root=None, p=None):
    """``np.asarray(x)``, and what is wrong with this rank's arguments on their own, as a
    message, or None.

    Never raises: whatever the arguments are (``op=["sum"]``, ``axis=1.0``, a ragged
    list), the message goes into the agreement so that every rank raises together."""
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as e:
        return np.empty(0, np.float32), f"x is not an array: {e}"
    return x, _problem(name, algorithm, x, op, axis, root, p)


def _problem(name, algorithm, x, op, axis, root, p):
    if not (isinstance(algorithm, str) and (algorithm in ALGORITHMS[name] or algorithm in ("mpi", "auto"))):
        return (f"unknown algorithm {algorithm!r} for {name}; choose from "
                f"{', '.join((*ALGORITHMS[name], 'mpi', 'auto'))}")
    if not (isinstance(op, str) and op in REDUCTIONS):
        return f"unknown op {op!r}; choose from {', '.join(REDUCTIONS)}"
    if x.dtype not in _DTYPE_SET:
        return f"dtype {x.dtype} is not supported; use one of {', '.join(map(str, DTYPES))}"
    if axis is not None and not _is_int(axis):
        return f"axis must be an integer, not {axis!r}"
    if axis is not None and not (x.ndim and -x.ndim <= axis < x.ndim):
        return f"axis {axis} is out of range for an array of shape {x.shape}"
    if root is not None and not (_is_int(root) and 0 <= root < p):
        return f"root {root!r} is out of range for a communicator of {p} ranks"
    return None


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _resolve(comm, name, algorithm, nbytes):
    """The algorithm to run: ``algorithm`` itself, or for ``"auto"`` the measured decision
    table's choice (tuning.py) and, where there is none, the cost model's."""
    if algorithm != "auto":
        return algorithm
    p = comm.Get_size()
    if p == 1:
        return next(iter(ALGORITHMS[name]))
    # the choice is remembered per communicator, op and size: evaluating every algorithm's
    # formula costs ~10 us, as much as a small message (the same on every rank: one table)
    choices = tuning.table_for(comm)["choices"]
    alg = choices.get((name, nbytes))
    if alg is None:
        if len(choices) > 4096:
            choices.clear()
        alg = choices[name, nbytes] = (tuning.decision(comm, name, nbytes)
                                       or _AUTO_MODEL.best(name, p, nbytes))
    return alg


# --- running and recording ------------------------------------------------------------------

def _run(comm, name, alg, requested, x, payload, fn):
    """Run one algorithm; if a ledger is open, time it and record what it sent."""
    if not ledger.recording():
        return fn(Channel(comm))
    ch = Channel(comm, trace=ledger.tracing())
    t0 = time.perf_counter()
    out = fn(ch)
    seconds = time.perf_counter() - t0
    ledger.record_call(ch, name, alg, x.dtype, x.size, payload, seconds, requested=requested,
                       library=alg == "mpi")
    return out


def _wide(work):
    """MPI cannot reduce 16-bit floats: widen them to float32."""
    return work.astype(np.float32) if work.dtype in _SIXTEEN_BIT else work


def _mpi_allreduce(comm, x, op):
    """The library's Allreduce from x itself into a kept buffer, copied out (scratch.py says
    why: into a fresh array it was 1.1-3.5x slower from 1 MiB to 16 MiB, on both libraries)."""
    send = _wide(x if x.flags.c_contiguous else x.flatten())
    result = scratch.buffer(comm, send.size, send.dtype, "result")
    comm.Allreduce(send, result, op=MPI_OPS[op])
    return result.astype(x.dtype)  # a copy: the caller's own array


def _mpi_reduce_scatter(comm, work, op, offsets):
    """The library's Reduce_scatter (block sizes from offsets), received into a kept buffer."""
    wide = _wide(work)
    counts = [offsets[j + 1] - offsets[j] for j in range(comm.Get_size())]
    mine = scratch.buffer(comm, counts[comm.Get_rank()], wide.dtype, "result")
    comm.Reduce_scatter(wide, mine, recvcounts=counts, op=MPI_OPS[op])
    return mine.astype(work.dtype)


def _mpi_allgather(comm, total, offsets):
    size = total.dtype.itemsize
    counts = [size * (offsets[j + 1] - offsets[j]) for j in range(comm.Get_size())]
    displs = [size * o for o in offsets[:-1]]
    mine = total[offsets[comm.Get_rank()]:offsets[comm.Get_rank() + 1]].copy()
    comm.Allgatherv([mine, MPI.BYTE], [total, (counts, displs), MPI.BYTE])
    return total
