"""The alpha-beta-gamma cost model of collective communication.

A message of n bytes costs alpha + n*beta seconds (latency plus inverse
bandwidth); reducing n bytes locally costs n*gamma. Each algorithm's formula,
``cost(p, n, alpha, beta, gamma)`` -> seconds, stands in its collective's table
beside the algorithm (``mpipar.collectives.allreduce.ALGORITHMS`` and its
siblings); :class:`CostModel` holds the three constants and looks the formulas up.
They are the closed forms of Thakur, Rabenseifner & Gropp, "Optimization of
Collective Communication Operations in MPICH" (IJHPCA 2005), with lg p rounded
up and, where an algorithm needs a power of two, the cost of folding the extra
ranks in and out added (q = 2^floor(lg p); see ``mpipar.collectives.blocks.Fold``).
A formula is written in seconds, term by term as in the paper: at a crossover size
two algorithms can cost exactly the same, and the same expression gives the same
floating-point number, so ``best`` (``algorithm="auto"``) settles such ties alike
on every rank and in every run.

Hand-written algorithms also pay o seconds per message (LogGP's software
overhead o; Alexandrov, Ionkov, Schauser & Scheiman, SPAA 1995): the Python of one
step -- the Channel's tally, slicing, a loop iteration, a NumPy call -- that the
MPI library's C code does not run. Every formula counts one alpha per message on
the critical path, so the model charges alpha + o wherever the formula has alpha,
for every algorithm but ``"mpi"`` (predicted with alpha alone). ``o`` is 0 in the
default model and in a ping-pong calibration; ``CostModel.calibrate`` measures it
(a Channel step minus a bare Sendrecv of the same bytes, :mod:`mpipar.measure.calibrate`).

Two families of algorithms see two bandwidths. In a ring, recursive doubling or
halving, Bruck or a scatter-allgather every rank sends at once, and the ranks share
the memory system: beta is measured that way (``CostModel.calibrate``). In naive,
tree and binomial algorithms the messages mostly travel one or a few at a time (a
root receiving from each rank in turn, a tree's upper levels), so they are priced
with ``beta_alone``, measured by a ping-pong with every other rank idle -- on the
16-core machine the contended beta made naive and tree 1.4-2.6x too slow at p = 4..16.
(``Algorithm.alone`` marks them; ``beta_alone`` None means beta for both.)

Every call of a collective also makes one private copy of n bytes into memory it has
just allocated -- its working copy of the input, or (allgather, and the library's
all-reduce) the result it hands back -- whichever algorithm runs. That copy is priced
kappa seconds per byte, once per call for every algorithm and ``"mpi"``: it never
changes which algorithm is best, only how long any of them takes. Fresh memory is
mapped on first touch, so kappa is well above a copy between warm buffers (a copy of
2 MiB into a new array took 0.2 ms on the 16-core machine: 0.1 ns/byte). 0 in the
default model; ``CostModel.calibrate`` measures it.

A call also runs Python outside its steps -- the wrapper's handling of its
arguments, the views of the blocks, the result's shape -- and some algorithms wait
more per step than one exchange shows. ``call`` holds that per call, for each
(op, algorithm): the time of a call with a payload of one element per rank, minus
what the formula predicts for it (floored at 0), measured by ``CostModel.calibrate``.
It is the same at every payload; at 64 KiB on 16 ranks it was 30-170 us of calls
that took 100-350 us.

Past the caches every byte costs more: on this project's 2-core machine a Sendrecv
took 0.09 ns/byte up to 512 KiB and 0.2 ns/byte from 2 MiB, and one line through both
was off by up to 1.7x. ``CostModel.calibrate`` then fits a second set of per-byte
constants (beta, gamma, kappa, beta_alone) on the sizes from the break it finds, kept
as ``large``, a CostModel of its own that prices payloads of ``large_from`` bytes and
more; up to ``small_up_to`` (the last size below the break) the first set does, and in
between the two are interpolated in lg n. The latency alpha and the per-step o stay
those of the small sizes.

n is the payload: the input of allreduce, broadcast and reduce_scatter, the
whole gathered result of allgather, the message of a point-to-point ``"send"`` or
``"recv"`` (``mpipar.parallel.p2p``, algorithm ``"p2p"``): one message, the model's
own unit, alpha + n*beta (Hockney 1994) whatever the communicator's size, since
a rank sending to itself still sends a message.
"""
from dataclasses import asdict, dataclass, replace
import math
from typing import Callable, NamedTuple, Optional

from .units import format_bytes, format_seconds


class Algorithm(NamedTuple):
    """An entry of a collective's ``ALGORITHMS`` table: the function, and its cost formula."""

    run: Callable  #: run(ch, buf, ...) on a Channel, as the collective's module describes
    cost: Callable  #: cost(p, n, alpha, beta, gamma): seconds on p ranks for a payload of n bytes
    alone: bool = False  #: its messages mostly travel one at a time: priced with beta_alone
    reads_input: bool = False  #: it never writes its input: the call copies none (only its result)


def ceil_lg(p):
    """ceil(lg p) for p >= 1: the rounds of a binomial tree, or of Bruck's allgather."""
    return (p - 1).bit_length()


def floor_lg(p):
    """lg q, q = 2^floor(lg p): the rounds of a power-of-two phase on q of the p ranks."""
    return p.bit_length() - 1


def folds(p):
    """1 if p is not a power of two (the extra ranks are folded in before and out after), else 0."""
    return int(p & (p - 1) != 0)


def share(p):
    """(p-1)/p: the part of the data that is not a rank's own block."""
    return (p - 1) / p


MESSAGE_OPS = ("send", "recv")  #: point-to-point operations: priced per message, not per collective


def message(p, n, alpha, beta, gamma):
    """One point-to-point message of n bytes: alpha + n*beta (p plays no part)."""
    return alpha + n * beta


def bandwidth_factor(op, p):
    """The share of the payload that must leave the busiest rank in any algorithm:
    2(p-1)/p for allreduce, (p-1)/p for allgather and reduce_scatter, 1 for broadcast,
    and 1 for a send or a recv (the whole message leaves one rank and reaches another).

    Times beta it is the bandwidth lower bound; times the algorithm bandwidth S/t it is
    the bus bandwidth of the nccl-tests convention (doc/PERFORMANCE.md there).
    """
    return {"allreduce": 2 * (p - 1) / p, "allgather": (p - 1) / p,
            "reduce_scatter": (p - 1) / p, "broadcast": 1.0, "send": 1.0, "recv": 1.0}[op]


def _table(op):
    """The algorithm table of ``op``: name -> Algorithm (a collective's, or p2p's for send/recv)."""
    # not at the top: mpipar.collectives and mpipar.parallel.p2p import this module
    if op in MESSAGE_OPS:
        from ..parallel.p2p import ALGORITHMS as tables
    else:
        from ..collectives import ALGORITHMS as tables
    if op not in tables:
        from ..collectives import ALGORITHMS
        raise ValueError(f"no cost formulas for {op!r}; choose from "
                         f"{', '.join([*ALGORITHMS, *MESSAGE_OPS])}")
    return tables[op]


@dataclass(frozen=True)
class CostModel:
    """Predicted seconds for each collective algorithm from three machine constants."""

    alpha: float = 1e-5   #: seconds per message (latency, incl. Python overhead)
    beta: float = 2e-10   #: seconds per byte sent (1 / bandwidth)
    gamma: float = 2e-10  #: seconds per byte reduced locally
    o: float = 0.0        #: seconds of Python per message of a hand-written algorithm (LogGP's o)
    kappa: float = 0.0    #: seconds per byte of the call's private copy into fresh memory
    beta_alone: Optional[float] = None  #: seconds per byte of a message with no other in flight
    source: str = "default"  #: where the constants came from, and how they were measured
    call: tuple = ()  #: ((op, algorithm, seconds), ...): each call's Python outside its formula
    large: Optional["CostModel"] = None  #: the per-byte constants for payloads >= large_from
    large_from: int = 0  #: bytes: the payload from which ``large`` prices a call
    small_up_to: int = 0  #: bytes: the payload up to which this model's own constants do

    def __post_init__(self):  # a model read back from JSON: lists to tuples, a dict to a model
        try:
            call = tuple((str(op), str(alg), float(s)) for op, alg, s in self.call or ())
        except (TypeError, ValueError) as e:
            raise TypeError(f"a cost model's call overheads are not (op, algorithm, seconds): {e}") from e
        object.__setattr__(self, "call", call)
        if isinstance(self.large, dict):
            object.__setattr__(self, "large", CostModel(**self.large))

    @classmethod
    def from_dict(cls, d):
        """The model that :meth:`to_dict` (then JSON) wrote; unknown keys raise TypeError
        (constants of another version)."""
        return cls(**d)

    def regime(self, n):
        """The model whose per-byte constants price an n-byte payload: this one up to
        ``small_up_to``, ``large`` from ``large_from`` (past the caches), and between the two
        sizes each per-byte constant interpolated linearly in lg n (no measured size lies there)."""
        if self.large is None or n <= self.small_up_to:
            return self
        if n >= self.large_from:
            return self.large
        w = math.log(n / self.small_up_to) / math.log(self.large_from / self.small_up_to)
        mix = {k: (1 - w) * getattr(self, k) + w * getattr(self.large, k) for k in ("beta", "gamma", "kappa")}
        if self.beta_alone is not None and self.large.beta_alone is not None:
            mix["beta_alone"] = (1 - w) * self.beta_alone + w * self.large.beta_alone
        return replace(self, large=None, **mix)

    def overhead(self, op, algorithm):
        """Seconds of a call of (op, algorithm) outside its formula (``call``; 0 if not measured)."""
        for o, alg, seconds in self.call:
            if o == op and alg == algorithm:
                return seconds
        return 0.0

    def _seconds(self, entry, p, n, library=False):
        beta = self.beta_alone if entry.alone and self.beta_alone is not None else self.beta
        return entry.cost(p, n, self.alpha if library else self.alpha + self.o, beta, self.gamma)

    def _copy(self, op, p, n, reads_input=False):
        """The call's private copy of its n-byte input, or for an algorithm that only reads it
        (a reduce-scatter's), its n/p-byte result; a point-to-point message has neither."""
        if op in MESSAGE_OPS:
            return 0.0
        return self.kappa * (n / p if reads_input else n)

    def predict(self, op, algorithm, p, n):
        """Seconds for one call of ``op`` by ``algorithm`` on p ranks with payload n bytes.

        The formula is the algorithm's entry in its collective's table. ``"mpi"`` is
        predicted as the best hand-written algorithm: what a library that picks well
        would achieve under this model, in C: without the per-message overhead o that
        every hand-written algorithm pays. A collective on one rank costs nothing; a
        point-to-point message (``"send"``, ``"recv"``) costs alpha + o + n*beta on any p
        (alpha + n*beta for ``"mpi"``). A collective adds kappa*n, its private copy (kappa*n/p,
        its result, where the algorithm only reads its input, as the library's reduce-scatter),
        and its measured per-call overhead; the per-byte constants are n's ``regime``.
        """
        if p <= 1 and op not in MESSAGE_OPS:
            return 0.0
        table, m = _table(op), self.regime(n)
        if algorithm == "mpi":
            best = min(m._seconds(entry, p, n, library=True) for entry in table.values())
            return best + m._copy(op, p, n, reads_input=op == "reduce_scatter") + self.overhead(op, "mpi")
        if algorithm not in table:
            raise ValueError(f"no cost formula for {op} algorithm {algorithm!r}")
        entry = table[algorithm]
        return m._seconds(entry, p, n) + m._copy(op, p, n, entry.reads_input) + self.overhead(op, algorithm)

    def lower_bound(self, op, p, n):
        """Bandwidth lower bound: bytes that must leave the busiest rank, times beta
        (n*beta for a send or a recv, on any p: the latency alpha is not in the bound)."""
        if p <= 1 and op not in MESSAGE_OPS:
            return 0.0
        return bandwidth_factor(op, p) * n * self.regime(n).beta

    def best(self, op, p, n):
        """The hand-written algorithm this model predicts to be fastest (``algorithm="auto"``)."""
        table = _table(op)
        if p <= 1:
            return next(iter(table))
        m = self.regime(n)
        return min(table, key=lambda alg: m._seconds(table[alg], p, n)
                   + m._copy(op, p, n, table[alg].reads_input) + self.overhead(op, alg))

    def to_dict(self):
        return asdict(self)

    def describe(self):
        """The constants in words: 'alpha = 12.3 us/message, beta = 0.2 ns/byte (5 GB/s), ...',
        and how they were measured (the source: contention or ping-pong, or the defaults)."""
        return (f"alpha = {format_seconds(self.alpha)}/message, beta = {format_seconds(self.beta)}/byte "
                f"({1e-9 / self.beta:.2f} GB/s), gamma = {format_seconds(self.gamma)}/byte, "
                f"o = {format_seconds(self.o)}/message of a hand-written algorithm, "
                f"kappa = {format_seconds(self.kappa)}/byte copied fresh"
                + (f", beta alone = {format_seconds(self.beta_alone)}/byte" if self.beta_alone else "")
                + (f"; from {format_bytes(self.large_from)}: beta = {format_seconds(self.large.beta)}/byte, "
                   f"gamma = {format_seconds(self.large.gamma)}/byte, "
                   f"kappa = {format_seconds(self.large.kappa)}/byte" if self.large else "")
                + (self._calls_text() if self.call else "")
                + f" [{self.source}]")

    def _calls_text(self):
        lo, hi = (format_seconds(f(c[2] for c in self.call)) for f in (min, max))
        return f"; {lo}-{hi} per call beyond the formulas ({len(self.call)} algorithms)"

    @classmethod
    def calibrate(cls, comm, sizes=None, trials=7, method="contention"):
        """Measure alpha, beta, gamma (and o) on ``comm``: see :mod:`mpipar.measure.calibrate`.

        ``method="contention"`` (every rank exchanging at once, o from Channel steps) or
        ``"pingpong"`` (ranks 0 and 1 alone, o = 0). Collective; every rank gets the same
        model. About a second.
        """
        from . import calibrate as measuring  # not at the top: it imports this module
        return measuring.calibrate(comm, method, sizes or measuring.SIZES, trials).model
