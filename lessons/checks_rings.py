"""The exercises on a ring's messages and roundings (lessons 01 and 05), registered in checks.py.

01_reduce_scatter: a ring reduce-scatter from point-to-point calls, run in jobs of 1-4 ranks on
integers (so the answer must equal MPI's Reduce_scatter bit for bit) and with what each rank
sends counted, against the bytes and messages the ledger records for mpipar's own ring.

05_ring_sum: the arithmetic one block of a 16-bit ring allreduce meets (rounded per hop or once),
on one process, against the bits mpipar's allreduce_lowp produces in jobs of 2-4 ranks.
"""
from checks import exercise, run_in_jobs
import numpy as np

# --- lesson 01: a ring reduce-scatter -------------------------------------------------------

REDUCE_SCATTER_SIZES = (12, 10, 1001, 3, 1, 0)   # divisible by p or not, shorter than p, empty

REDUCE_SCATTER_JOB = '''
import numpy as np
from mpi4py import MPI
from mpipar.collectives import reduce_scatter as library_reduce_scatter
from mpipar.launch import emit
from mpipar.measure.ledger import CommLedger

{source}

POINT_TO_POINT = {{"Send", "Recv", "Sendrecv", "Isend", "Irecv", "Get_rank", "Get_size", "rank", "size"}}


class Counting:
    "The communicator, counting the bytes and messages this rank sends; point-to-point calls only."

    def __init__(self, comm):
        self.comm, self.sent, self.messages, self.peers = comm, 0, 0, set()

    def _count(self, buf, dest):
        data = buf[0] if isinstance(buf, (list, tuple)) else buf
        self.sent += np.asarray(data).nbytes
        self.messages += 1
        self.peers.add(int(dest))

    def Send(self, buf, dest, *args, **kw):
        self._count(buf, dest)
        return self.comm.Send(buf, dest, *args, **kw)

    def Isend(self, buf, dest, *args, **kw):
        self._count(buf, dest)
        return self.comm.Isend(buf, dest, *args, **kw)

    def Sendrecv(self, sendbuf, dest, *args, **kw):
        self._count(sendbuf, dest)
        return self.comm.Sendrecv(sendbuf, dest, *args, **kw)

    def __getattr__(self, name):
        if name in POINT_TO_POINT:
            return getattr(self.comm, name)
        raise AttributeError(f"comm.{{name}}: this exercise builds the collective from point-to-point "
                             f"calls only (Send, Recv, Sendrecv, Isend, Irecv)")


comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
rows = []
for n in {sizes}:
    x = (np.arange(n, dtype=np.int64) + 1) * (rank + 1) + 1000 * rank ** 2
    counting = Counting(comm)
    got = np.asarray({name}(counting, x.copy()))
    sizes = [len(b) for b in np.array_split(np.arange(n), p)]
    want = np.empty(sizes[rank], np.int64)
    comm.Reduce_scatter(x, want, recvcounts=sizes)           # the MPI library's answer
    total = np.empty_like(x)
    comm.Allreduce(x, total)
    with CommLedger() as led:
        library_reduce_scatter(comm, x.copy(), algorithm="ring")
    record = led.records[0] if led.records else {{"bytes_sent": 0, "messages": 0}}
    rows.append({{"n": n, "got": got.tolist(), "dtype": str(got.dtype), "want": want.tolist(),
                 "total": total.tolist(), "sizes": sizes, "sent": counting.sent,
                 "messages": counting.messages, "peers": sorted(counting.peers),
                 "ledger_sent": int(record["bytes_sent"]), "ledger_messages": int(record["messages"])}})
emit(comm.gather(rows))
'''


@exercise("01_reduce_scatter")
def reduce_scatter_check(reduce_scatter):
    """reduce_scatter(comm, x) -> block r (as np.array_split cuts it) of the sum of every rank's x,
    on rank r, from point-to-point calls round a ring: equal to MPI's Reduce_scatter, and sending
    what the ledger counts for mpipar's ring (p - 1 messages, n - n_r elements) to neighbours only."""
    from checks import _NoComm, _source
    try:
        reduce_scatter(_NoComm(), np.zeros(4, np.int64))
    except NotImplementedError:
        raise
    except Exception:  # a real answer asks the communicator, which the stand-in does not offer
        pass
    script = REDUCE_SCATTER_JOB.format(source=_source(reduce_scatter), name=reduce_scatter.__name__,
                                       sizes=REDUCE_SCATTER_SIZES)
    problems = []
    for p, data in run_in_jobs(script, (1, 2, 3, 4)):
        if isinstance(data, str):
            return problems + [data]
        for rank, rows in enumerate(data):
            for row in rows:
                problems += _reduce_scatter_problems(p, rank, row)
        if problems:
            return problems[:3]
    return problems


def _reduce_scatter_problems(p, rank, row):
    n, got, want, sizes = row["n"], row["got"], row["want"], row["sizes"]
    where = f"p = {p}, n = {n}: rank {rank}"
    if got != want or row["dtype"] != "int64":
        starts = np.cumsum([0] + sizes)
        blocks = {b: row["total"][starts[b]:starts[b + 1]] for b in range(p)}
        if got == row["total"] and p > 1:
            return [f"{where} returned the whole sum (an allreduce); a reduce-scatter leaves rank r "
                    f"only block r, {sizes[rank]} element(s)"]
        same = [b for b, v in blocks.items() if v == got and b != rank and len(v)]
        if same:
            return [f"{where} returned the sum of block {same[0]}, not of block {rank} (rank r ends "
                    f"with block r, as MPI's Reduce_scatter leaves it)"]
        if len(got) != len(want):
            return [f"{where} returned {len(got)} element(s), want {len(want)} (block {rank} of "
                    f"np.array_split: sizes {sizes})"]
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), 0)
        kind = "" if row["dtype"] == "int64" else f" (dtype {row['dtype']}, want int64)"
        return [f"{where}: element {first} of its block is {got[first] if got else None}, "
                f"MPI's Reduce_scatter says {want[first] if want else None}{kind} -- is every "
                f"rank's contribution added exactly once?"]
    if (row["sent"], row["messages"]) != (row["ledger_sent"], row["ledger_messages"]):
        return [f"{where} sent {row['sent']} bytes in {row['messages']} message(s); mpipar's ring "
                f"sends {row['ledger_sent']} bytes in {row['ledger_messages']} (the ledger): p - 1 "
                f"messages, every block but its own once, n - n_r = {n - sizes[rank]} int64 values"]
    neighbours = {(rank + 1) % p, (rank - 1) % p}
    if set(row["peers"]) - neighbours:
        return [f"{where} sent to rank(s) {sorted(set(row['peers']) - neighbours)}: a ring talks to its "
                f"neighbours only ({sorted(neighbours)})"]
    return []


# --- lesson 05: one block of a 16-bit ring ----------------------------------------------------

RING_SUM_JOB = '''
import numpy as np
from mpi4py import MPI
from mpipar.collectives.lowp import allreduce_lowp
from mpipar.launch import emit

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
rng = np.random.default_rng([5, rank])
rows = []
for n, kind in ((1001, "uniform"), (10, "cancelling"), (3, "uniform")):
    if kind == "uniform":
        x = rng.uniform(0.5, 1.5, n).astype(np.float32)
    else:                                       # partial sums far larger than the result
        x = ((-1) ** rank * np.linspace(500, 1500, n) + rng.standard_normal(n)).astype(np.float32)
    out = {r: allreduce_lowp(comm, x, "bfloat16", r, "ring").tolist() for r in ("per_hop", "once")}
    rows.append({"n": n, "x": x.tolist(), "out": out})
emit(comm.gather(rows))
'''


def ring_order(p, b):
    """The ranks in the order a ring reduce-scatter visits block b: it starts at rank b + 1 and
    ends at rank b (mpipar's ring_in_place)."""
    return [(b + 1 + k) % p for k in range(p)]


@exercise("05_ring_sum")
def ring_sum_check(ring_sum):
    """ring_sum(parts, rounding) -> float32: one block of a bfloat16 ring allreduce, from the
    float32 parts of the ranks in the order the ring visits them. rounding "per_hop": every
    partial sum that travels is rounded to bfloat16 and added in float32; "once": the sum runs in
    float32; either way the finished block is rounded to bfloat16 once. Bitwise equal to
    allreduce_lowp at p = 2, 3, 4, uneven blocks and cancelling sums included."""
    small = [np.ones(2, np.float32), np.ones(2, np.float32)]
    ring_sum(small, "per_hop")  # a stub raises NotImplementedError here, before any job
    problems = []
    for p, data in run_in_jobs(RING_SUM_JOB, (2, 3, 4)):
        if isinstance(data, str):
            return [data]
        for case in range(len(data[0])):
            n = data[0][case]["n"]
            xs = [np.array(rows[case]["x"], np.float32) for rows in data]
            starts = np.cumsum([0] + [len(b) for b in np.array_split(np.arange(n), p)])
            for rounding in ("per_hop", "once"):
                want = np.array(data[0][case]["out"][rounding], np.float32)
                for b in range(p):
                    blk, order = slice(starts[b], starts[b + 1]), ring_order(p, b)
                    got = np.asarray(ring_sum([xs[r][blk].copy() for r in order], rounding))
                    problem = _ring_sum_problem(got, want[blk], rounding, p, b, order)
                    if problem:
                        problems.append(problem)
                        break
                if len(problems) >= 3:
                    return problems
    return problems


def _ring_sum_problem(got, want, rounding, p, b, order):
    """What is wrong with one block of the student's ring_sum, or None (bitwise equal)."""
    import ml_dtypes
    if got.dtype != np.float32 or got.shape != want.shape:
        return f"ring_sum returned {got.dtype} of shape {got.shape}, want float32 of shape {want.shape}"
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    if not bad.size:
        return None
    i = int(bad[0])
    if not np.array_equal(got, got.astype(ml_dtypes.bfloat16).astype(np.float32)):
        hint = "the finished block is rounded to bfloat16 (the allgather sends 16 bits)"
    elif rounding == "per_hop":
        hint = "every partial that travels is rounded to bfloat16, then added in float32"
    else:
        hint = "the sum runs in float32; only the result is rounded"
    return (f"rounding {rounding!r}, p = {p}, block {b} (ranks {order} in ring order, {len(got)} values): "
            f"{len(bad)} value(s) differ from allreduce_lowp, e.g. [{i}]: yours {float(got[i])!r}, "
            f"the ring's {float(want[i])!r} -- {hint}")
