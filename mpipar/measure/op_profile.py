"""OpProfile: where a forward pass spends its time, by kind of operation, and its matrix products.

    with OpProfile() as prof:
        model.forward(tokens)
    prof.seconds          # {"matmul": 0.81, "softmax": 0.05, "norm": 0.02, ...}
    prof.products         # every matrix product: its operands' shapes and layouts (see floor)

The model's code marks its operations explicitly, in two ways only:

* ``matmul(a, b)`` instead of ``a @ b`` for every matrix product of the model;
* ``@timed("norm")`` on a layer function (a norm, an activation, the softmax, the lookup).

Both are the plain operation while no profile is open: one test of an empty list, a few
tens of nanoseconds against the milliseconds an operation takes. While a profile is open
(profiles nest, like ``CommLedger``s) each marked call is timed with ``time.perf_counter``
and its seconds added to its kind in every open profile. The marked calls never nest, so
no second is counted twice; communication is not marked here -- the ``CommLedger``
times it -- and what neither marks is the rest: residual adds, biases, reshapes, Python.
The collectives' argument agreement (``collectives.checking.agree``) is marked: it is the
first message of a collective, so a rank that arrives early waits there for the slowest
one -- the load imbalance of a split that is uneven (12 heads on 8 ranks: 2 or 1 each).

A profile counts the calls of the thread that opened it. A communication thread's work (the
asynchronous column-parallel backward's reduction, mpipar.parallel.tp_async, with its
agreement) overlaps that thread's, so counting it too would count those seconds twice: the
ledger records that collective, and the opening thread's wait for it falls into "other".

``KINDS`` names the kinds a report shows, in order.
"""
import functools
import threading
import time

import numpy as np

_OPEN = []  # the profiles open on this rank, innermost last

#: the kinds of operation, in report order ("communication" comes from the CommLedger,
#: "other" is what remains of the total)
KINDS = ("matmul", "softmax", "norm", "activation", "embedding", "rotary", "agreement",
         "communication", "other")
#: what a report says each kind is
KIND_NAMES = {"matmul": "matrix products", "softmax": "attention scale, mask and softmax",
              "norm": "LayerNorm / RMSNorm", "activation": "GELU / SiLU",
              "embedding": "embedding lookup and logit assembly", "rotary": "rotary positions",
              "agreement": "agreeing on a collective's arguments, incl. waiting for the slowest rank",
              "communication": "communication (the ledger)",
              "other": "the rest: residual adds, biases, reshapes, Python"}


def profiling():
    """True while at least one profile is open."""
    return bool(_OPEN)


def _add(kind, seconds, operands=()):
    thread = threading.get_ident()
    for prof in _OPEN:
        if prof.thread != thread:
            continue
        prof.seconds[kind] = prof.seconds.get(kind, 0.0) + seconds
        prof.calls[kind] = prof.calls.get(kind, 0) + 1
        if operands and prof.persistent is not None:
            prof.products.append(tuple(Operand.of(a, prof.persistent) for a in operands))


def _owner(a):
    """The array that owns ``a``'s memory (``a`` itself, or the base of a view)."""
    while a.base is not None:
        a = a.base
    return a


def matmul(a, b):
    """a @ b; while a profile is open, timed as "matmul" and described in its ``products``."""
    if not _OPEN:
        return a @ b
    t0 = time.perf_counter()
    out = a @ b
    _add("matmul", time.perf_counter() - t0, (a, b))
    return out


def timed(kind):
    """Decorator: the function's calls count as ``kind`` while a profile is open."""
    def decorate(function):
        @functools.wraps(function)
        def marked(*args, **kwargs):
            if not _OPEN:
                return function(*args, **kwargs)
            t0 = time.perf_counter()
            out = function(*args, **kwargs)
            _add(kind, time.perf_counter() - t0)
            return out
        return marked
    return decorate


class Operand:
    """What the BLAS sees of one matmul operand: shape, strides (they decide transposition
    flags and leading dimensions) and dtype -- and the array itself when it is persistent
    memory (a parameter), so that replaying the product reads the same bytes; activations
    are not kept (a profile would hold a whole forward's)."""

    __slots__ = ("shape", "strides", "dtype", "array")

    def __init__(self, shape, strides, dtype, array=None):
        self.shape, self.strides, self.dtype, self.array = shape, strides, dtype, array

    @classmethod
    def of(cls, a, persistent):
        """``a`` described; the array kept if its memory's owner's id is in ``persistent``."""
        return cls(a.shape, a.strides, a.dtype, a if id(_owner(a)) in persistent else None)

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * self.dtype.itemsize


class OpProfile:
    """Seconds and calls per kind of operation while open; the matrix products' operands.

    ``persistent``: describe every product (``Operand`` pairs, for ``mpipar.bench.floor``),
    holding on to the operands whose memory belongs to one of these arrays (a model's
    parameters, see ``model_arrays``); None: keep no products.
    """

    def __init__(self, persistent=None):
        self.persistent = None if persistent is None else {id(_owner(a)) for a in persistent}
        self.seconds, self.calls, self.products = {}, {}, []
        self.wall_seconds = 0.0
        self._t0 = None
        self.thread = None  #: the thread whose calls it counts: the one that opened it

    def __enter__(self):
        self.thread = threading.get_ident()
        _OPEN.append(self)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall_seconds += time.perf_counter() - self._t0
        _OPEN.remove(self)

    def table(self, total, comm_seconds):
        """{kind: seconds} for every kind of ``KINDS``: the marked kinds, the ledger's
        communication, and "other" = ``total`` minus all of them."""
        out = {kind: self.seconds.get(kind, 0.0) for kind in KINDS}
        out["communication"] = comm_seconds
        out["other"] = total - sum(v for k, v in out.items() if k != "other")
        return out


def model_arrays(model):
    """Every parameter array of ``model``'s shards: the persistent memory of its products."""
    return [v for s in model.shards for v in s.values() if isinstance(v, np.ndarray)]
