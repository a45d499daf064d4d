"""The ledger's bytes_sent, messages and steps against counts derived from each algorithm.

The expected numbers are worked out here from the algorithm descriptions (the
docstrings in mpipar/collectives and Thakur, Rabenseifner & Gropp 2005), not read
off the implementation: per rank in ``expected`` and, as an independent check,
summed over all ranks in closed form in ``totals``. Every world size 2..P is tried
inside one job, on the communicator of ranks 0..k-1.

Notation: p ranks, n payload bytes (allgather: the whole gathered result), b[j]
the bytes of block j, lg = ceil(log2), q = 2^floor(lg p) (power-of-two algorithms
fold the extra ranks q..p-1 onto ranks 0..p-q-1 first and send them the result last).
"""
import contextlib
import itertools

from helpers import all_ranks_ok, first_ranks
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import ALGORITHMS, allgather, allreduce, broadcast, reduce_scatter
from mpipar.collectives.multiplying import factors
from mpipar.measure.cost_model import CostModel
from mpipar.measure.ledger import CommLedger

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
CASES = [(op, alg) for op, algs in ALGORITHMS.items() for alg in algs]
DTYPES = ["float64", "float16"]  # 8- and 2-byte items: bytes on the wire scale with itemsize


def lg(p):
    return (p - 1).bit_length()  # ceil(log2 p); 0 for p = 1


def pow2_floor(p):
    return 1 << (p.bit_length() - 1)


def split_bytes(count, p, row_bytes):
    """Bytes of each block when np.array_split cuts ``count`` rows into p blocks."""
    return [len(part) * row_bytes for part in np.array_split(np.arange(count), p)]


def binomial_sends(p, v):
    """Binomial tree from relative rank 0: in round k every rank v < 2^k has the data and
    sends it to v + 2^k if that rank exists. Messages relative rank v sends."""
    return sum(1 for k in range(lg(p)) if v < 2**k and v + 2**k < p)


def scatter_sends(lo, hi, b):
    """Van de Geijn's scatter: relative rank lo holds blocks lo..hi-1, keeps the lower
    half [lo, mid), mid = lo + ceil((hi-lo)/2), and hands [mid, hi) to rank mid; both
    halves recurse. Returns (sender, bytes) for every message."""
    if hi - lo <= 1:
        return []
    mid = lo + (hi - lo + 1) // 2
    return [(lo, sum(b[mid:hi]))] + scatter_sends(lo, mid, b) + scatter_sends(mid, hi, b)


def doubling_sent(s, i):
    """Recursive doubling over slots s: before the step with distance d = 1, 2, ..., q/2
    rank i holds (and sends all of) the d slots of its aligned group."""
    return sum(sum(s[i - i % d:i - i % d + d]) for d in (2**k for k in range(lg(len(s)))))


def expected(op, alg, p, r, b, root=0):
    """(messages, bytes_sent, steps) of rank r. b[j]: block j's bytes (allgather: rank j's
    contribution; broadcast: the block relative rank j owns in the scatter)."""
    n, L, q = sum(b), lg(p), pow2_floor(p)
    lq, fold = lg(q), int(q < p)
    extra, partner = r >= q, int(r + q < p)  # rank r >= q is folded onto r - q
    s = [b[i] + (b[i + q] if i + q < p else 0) for i in range(q)]  # slot i: blocks i, i+q
    v = (r - root) % p
    # The recursive halving sends, over its lg q steps, every slot but its own exactly once.
    halving = n - s[r] if not extra else 0
    if (op, alg) == ("allreduce", "naive"):  # everyone sends n to 0; 0 sends n to everyone
        return (p - 1, (p - 1) * n, 2) if r == 0 else (1, n, 2)
    if (op, alg) == ("allreduce", "tree"):  # each rank but 0 sends up once, then a binomial bcast
        m = (r != 0) + binomial_sends(p, r)
        return m, m * n, 2 * L
    if (op, alg) == ("allreduce", "recursive_doubling"):  # whole vector in every message
        m = 1 if extra else lq + partner
        return m, m * n, lq + 2 * fold
    if (op, alg) == ("allreduce", "recursive_multiplying"):  # the whole vector to k - 1 peers
        m = sum(k - 1 for k in factors(p))  # in each round, p = k_1 k_2 ... (16 = 4 x 4)
        return m, m * n, len(factors(p))
    if (op, alg) == ("allreduce", "ring"):  # RS sends every block but r, AG all but r+1
        return 2 * (p - 1), (n - b[r]) + (n - b[(r + 1) % p]), 2 * (p - 1)
    if (op, alg) == ("allreduce", "rabenseifner"):
        if extra:
            return 1, n, 2 * lq + 2 * fold
        return 2 * lq + partner, halving + doubling_sent(s, r) + partner * n, 2 * lq + 2 * fold
    if (op, alg) == ("allgather", "naive"):  # blocks to 0, then 0 sends all n to everyone
        return (p - 1, (p - 1) * n, 2) if r == 0 else (1, b[r], 2)
    if (op, alg) == ("allgather", "ring"):  # passes on every block but its right neighbour's
        return p - 1, n - b[(r + 1) % p], p - 1
    if (op, alg) == ("allgather", "recursive_doubling"):
        if extra:  # its own block in, the whole result back
            return 1, b[r], lq + 2 * fold
        return lq + partner, doubling_sent(s, r) + partner * n, lq + 2 * fold
    if (op, alg) == ("allgather", "bruck"):  # at distance d: blocks r .. r+min(d,p-d)-1
        sent = sum(b[(r + k) % p] for d in (2**j for j in range(L)) for k in range(min(d, p - d)))
        return L, sent, L
    if (op, alg) == ("reduce_scatter", "naive"):  # all of x to 0; 0 sends block j to rank j
        return (p - 1, n - b[0], 2) if r == 0 else (1, n, 2)
    if (op, alg) == ("reduce_scatter", "ring"):  # partial sums of every block but its own
        return p - 1, n - b[r], p - 1
    if (op, alg) == ("reduce_scatter", "recursive_halving"):
        if extra:  # its whole input in, its own block back
            return 1, n, lq + 2 * fold
        return lq + partner, halving + partner * b[(r + q) % p], lq + 2 * fold
    if (op, alg) == ("broadcast", "naive"):
        return (p - 1, (p - 1) * n, 1) if v == 0 else (0, 0, 1)
    if (op, alg) == ("broadcast", "binomial"):
        m = binomial_sends(p, v)
        return m, m * n, L
    if (op, alg) == ("broadcast", "scatter_allgather"):  # then a ring allgather
        mine = [nb for src, nb in scatter_sends(0, p, b) if src == v]
        return len(mine) + p - 1, sum(mine) + n - b[(v + 1) % p], L + p - 1
    raise AssertionError(f"no expectation for {op} {alg}")


def totals(op, alg, p, b):
    """(messages, bytes) summed over all ranks, in closed form."""
    n, q = sum(b), pow2_floor(p)
    folded = q * lg(q) + 2 * (p - q)  # lg q exchanges on each of q ranks, one in, one out
    extras = sum(b[q:])  # blocks of ranks q..p-1 travel once more in the folds
    return {
        ("allreduce", "naive"): (2 * (p - 1), 2 * (p - 1) * n),
        ("allreduce", "tree"): (2 * (p - 1), 2 * (p - 1) * n),  # once up, once down per rank
        ("allreduce", "recursive_doubling"): (folded, folded * n),
        ("allreduce", "recursive_multiplying"): (p * sum(k - 1 for k in factors(p)),
                                                 p * sum(k - 1 for k in factors(p)) * n),
        ("allreduce", "ring"): (2 * p * (p - 1), 2 * (p - 1) * n),
        ("allreduce", "rabenseifner"): (folded + q * lg(q), 2 * (p - 1) * n),
        ("allgather", "naive"): (2 * (p - 1), (p - 1) * n + n - b[0]),
        ("allgather", "ring"): (p * (p - 1), (p - 1) * n),
        ("allgather", "recursive_doubling"): (folded, (p - 1) * n + extras),
        ("allgather", "bruck"): (p * lg(p), (p - 1) * n),
        ("reduce_scatter", "naive"): (2 * (p - 1), (p - 1) * n + n - b[0]),
        ("reduce_scatter", "ring"): (p * (p - 1), (p - 1) * n),
        ("reduce_scatter", "recursive_halving"): (folded, (p - 1) * n + extras),
        ("broadcast", "naive"): (p - 1, (p - 1) * n),
        ("broadcast", "binomial"): (p - 1, (p - 1) * n),  # every rank but root receives once
        ("broadcast", "scatter_allgather"): (p - 1 + p * (p - 1), None),  # bytes: per rank only
    }[(op, alg)]


def call(comm, op, alg, count, dtype, root=0):
    """Run one collective under a ledger; return its record and the block sizes b."""
    p, r, item = comm.Get_size(), comm.Get_rank(), np.dtype(dtype).itemsize
    with CommLedger() as led:
        if op == "allreduce":
            allreduce(comm, np.ones(count, dtype), algorithm=alg)
            b = split_bytes(count, p, item)
        elif op == "reduce_scatter":  # shape (2, count), split along axis 1: a block is 2 columns
            reduce_scatter(comm, np.ones((2, count), dtype), axis=1, algorithm=alg)
            b = split_bytes(count, p, 2 * item)
        elif op == "allgather":  # rank j contributes (count + j) % 4 rows of 3: uneven, some 0
            rows = [(count + j) % 4 for j in range(p)]
            allgather(comm, np.ones((rows[r], 3), dtype), algorithm=alg)
            b = [3 * item * k for k in rows]
        else:
            broadcast(comm, np.ones(count, dtype), root=root, algorithm=alg)
            b = split_bytes(count, p, item)
    (record,) = led.records
    return record, b


@pytest.fixture(scope="module")
def comms():
    """(k, communicator of ranks 0..k-1) for k = 2..P; COMM_NULL on ranks outside it."""
    with contextlib.ExitStack() as stack:
        yield [(k, stack.enter_context(first_ranks(k))) for k in range(2, P + 1)]


def traffic_errors(comms, op, alg, fields):
    """Compare this rank's record with ``expected`` and the sums with ``totals``.

    fields "traffic": messages and bytes_sent; "steps": steps, and that every rank
    counts the same number of rounds (a rank that sits a round out still counts it).
    """
    try:  # the same on every rank: an algorithm without counts here fails, and hangs nobody
        expected(op, alg, 2, 0, [0, 0]), totals(op, alg, 2, [0, 0])
    except (AssertionError, KeyError):
        return [f"no counts for {op} {alg}: add them to expected() and totals()"]
    errors = []
    for k, comm in comms:
        if comm == MPI.COMM_NULL:
            continue
        r = comm.Get_rank()
        # 1 element (fewer than p), a multiple of p, and not a multiple of p
        roots = sorted({0, k - 1})
        for count, dtype, root in itertools.product([1, 6 * k, 6 * k + 1], DTYPES, roots):
            if op != "broadcast" and root:
                continue
            rec, b = call(comm, op, alg, count, dtype, root)
            where = f"p={k} count={count} {dtype} root={root}"
            messages, nbytes, steps = expected(op, alg, k, r, b, root)
            if fields == "steps":
                if rec["steps"] != steps:
                    errors.append(f"{where}: steps = {rec['steps']}, want {steps}")
                if len(set(comm.allgather(rec["steps"]))) != 1:
                    errors.append(f"{where}: ranks count different steps")
                continue
            if (rec["messages"], rec["bytes_sent"]) != (messages, nbytes):
                errors.append(f"{where}: (messages, bytes) = "
                              f"{rec['messages'], rec['bytes_sent']}, want {messages, nbytes}")
            want = totals(op, alg, k, b)
            got = (comm.allreduce(rec["messages"]), comm.allreduce(rec["bytes_sent"]))
            if got[0] != want[0] or want[1] is not None and got[1] != want[1]:
                errors.append(f"{where}: total (messages, bytes) = {got}, want {want}")
            if (rec["nbytes"], rec["world_size"], rec["rank"]) != (sum(b), k, r):
                errors.append(f"{where}: record says nbytes, p, rank = "
                              f"{rec['nbytes'], rec['world_size'], rec['rank']}")
    return errors


@pytest.mark.mpi
@pytest.mark.parametrize("op,alg", CASES)
def test_bytes_and_messages_match_formulas(comms, op, alg):
    all_ranks_ok(traffic_errors(comms, op, alg, "traffic"))


@pytest.mark.mpi
@pytest.mark.parametrize("op,alg", CASES)
def test_steps_match_formulas(comms, op, alg):
    all_ranks_ok(traffic_errors(comms, op, alg, "steps"))


@pytest.mark.mpi
@pytest.mark.parametrize("op,alg", CASES)  # one rank: nothing sent, in no rounds (the model: 0 s)
def test_one_rank_sends_nothing(op, alg):
    rec, _ = call(MPI.COMM_SELF, op, alg, 5, "float32")
    assert (rec["messages"], rec["bytes_sent"], rec["steps"]) == (0, 0, 0)


@pytest.mark.mpi
@pytest.mark.parametrize("op", list(ALGORITHMS))
def test_records_of_auto_and_mpi(op):
    """"auto" records the algorithm the default model picks; "mpi" records no traffic."""
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    n = x.nbytes * (P if op == "allgather" else 1)
    fn = {"allreduce": allreduce, "allgather": allgather,
          "reduce_scatter": reduce_scatter, "broadcast": broadcast}[op]
    with CommLedger() as outer:
        with CommLedger() as inner:
            fn(COMM, x, algorithm="auto")
            fn(COMM, x, algorithm="mpi")
    assert len(outer.records) == len(inner.records) == 2  # nested ledgers both record
    auto, lib = inner.records
    model = CostModel()
    assert auto["algorithm"] == model.best(op, P, n) and auto["requested"] == "auto"
    assert lib["algorithm"] == "mpi"
    assert lib["bytes_sent"] is lib["messages"] is lib["steps"] is None
    for rec in (auto, lib):
        assert (rec["op"], rec["dtype"], rec["nbytes"], rec["world_size"], rec["rank"]) == \
            (op, "float32", n, P, RANK)
        assert rec["predicted_seconds"] == model.predict(op, rec["algorithm"], P, n)
        assert rec["seconds"] >= 0
    assert auto["messages"] == expected(op, auto["algorithm"], P, RANK, [0] * P)[0]
