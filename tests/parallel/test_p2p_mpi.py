"""p2p: buffer messages between ranks, each one in the ledger with its prediction.

Every test posts receives before it waits and completes every message it posts,
so no rank is left waiting; verdicts are combined with ``helpers.all_ranks_ok``.
"""
from helpers import NoMessages, all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import DTYPES
from mpipar.measure.ledger import CommLedger, CostModel
from mpipar.parallel import p2p
from mpipar.parallel.mesh import Mesh

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
RIGHT, LEFT = (RANK + 1) % P, (RANK - 1) % P
SHAPES = [(0,), (7,), (3, 5), (2, 3, 4), (1000,), (1,)]
KEYS = {"op", "algorithm", "dtype", "count", "nbytes", "world_size", "rank", "bytes_sent",
        "bytes_received", "messages", "steps", "seconds", "in_flight_seconds", "peer", "tag",
        "predicted_seconds", "lower_bound_seconds"}


def payload(rank, dtype, shape, salt=0):
    """What ``rank`` sends: distinct per rank, dtype, shape and salt."""
    n = int(np.prod(shape))
    return ((np.arange(n) % 61) + 3 * rank + salt).astype(np.float32).astype(dtype).reshape(shape)


def raw(a):
    """The bytes of ``a``: bitwise comparison, NaNs included."""
    return a.reshape(-1).view(np.uint8)


@pytest.mark.mpi
def test_ring_exchange_of_every_dtype_and_shape():
    problems, cases = [], [(dt, shape) for dt in DTYPES for shape in SHAPES]
    with CommLedger() as led:
        bufs = [np.empty(shape, dt) for dt, shape in cases]
        recvs = [p2p.irecv(COMM, b, LEFT, tag=t) for t, b in enumerate(bufs)]
        sends = [p2p.isend(COMM, payload(RANK, dt, shape), RIGHT, tag=t)
                 for t, (dt, shape) in enumerate(cases)]
        got = p2p.waitall(recvs + sends)
    for (dt, shape), b, g in zip(cases, bufs, got):
        if g is not b or not np.array_equal(raw(b), raw(payload(LEFT, dt, shape))):
            problems.append(f"{dt} {shape}: wrong data from rank {LEFT}")
    recs = led.records
    sent = sum(payload(RANK, dt, shape).nbytes for dt, shape in cases)
    model = CostModel()
    if len(recs) != 2 * len(cases):
        problems.append(f"{len(recs)} records for {2 * len(cases)} messages")
    for r in recs:
        if not KEYS <= set(r):
            problems.append(f"record lacks {KEYS - set(r)}")
            continue
        send = r["op"] == "send"
        want = (r["nbytes"] if send else 0, 0 if send else r["nbytes"], int(send), 1,
                RIGHT if send else LEFT, "p2p", P, RANK)
        have = (r["bytes_sent"], r["bytes_received"], r["messages"], r["steps"], r["peer"],
                r["algorithm"], r["world_size"], r["rank"])
        if have != want:
            problems.append(f"{r['op']} record {have}, want {want}")
        if r["predicted_seconds"] != model.alpha + model.beta * r["nbytes"] \
                or r["lower_bound_seconds"] != model.beta * r["nbytes"]:
            problems.append(f"{r['op']} prediction {r['predicted_seconds']}")
        if not 0 <= r["seconds"] <= r["in_flight_seconds"]:
            problems.append(f"times {r['seconds']} > {r['in_flight_seconds']}")
    by_dtype = {(r["op"], r["tag"]): (r["dtype"], r["count"]) for r in recs}
    for t, (dt, shape) in enumerate(cases):
        if by_dtype.get(("recv", t)) != (str(dt), int(np.prod(shape))):
            problems.append(f"tag {t}: recv record {by_dtype.get(('recv', t))}")
    mine = sum(r["bytes_sent"] for r in recs)
    if mine != sent:
        problems.append(f"bytes_sent {mine}, sent {sent}")
    totals = COMM.allreduce(np.array([sent, mine, sum(r["bytes_received"] for r in recs)]))
    if not totals[0] == totals[1] == totals[2]:  # every byte counted once, sent and received
        problems.append(f"world: sent {totals[0]}, recorded sent {totals[1]}, received {totals[2]}")
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_tags_keep_messages_apart_and_one_tag_keeps_order():
    problems = []
    a, b = (np.full(4, RANK * 10 + k, np.int64) for k in (1, 2))
    got = [np.empty(4, np.int64) for _ in range(4)]
    msgs = [p2p.irecv(COMM, got[0], LEFT, tag=2), p2p.irecv(COMM, got[1], LEFT, tag=1),
            p2p.irecv(COMM, got[2], LEFT, tag=3), p2p.irecv(COMM, got[3], LEFT, tag=3)]
    msgs += [p2p.isend(COMM, a, RIGHT, tag=1), p2p.isend(COMM, b, RIGHT, tag=2),
             p2p.isend(COMM, a, RIGHT, tag=3), p2p.isend(COMM, b, RIGHT, tag=3)]
    p2p.waitall(msgs[::-1])  # any order of waiting completes them all
    want = [LEFT * 10 + k for k in (2, 1, 1, 2)]
    if [int(g[0]) for g in got] != want:
        problems.append(f"received {[int(g[0]) for g in got]}, want {want}")
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_blocking_send_and_recv():
    problems = []
    x = np.arange(12, dtype=np.float64).reshape(3, 4) + RANK
    y = np.zeros_like(x)
    with CommLedger() as led:
        if P == 1:  # to itself: the receive is posted first
            r = p2p.irecv(COMM, y, 0, tag=5)
            p2p.send(COMM, x, 0, tag=5)
            p2p.wait(r)
        elif RANK == 0:
            p2p.send(COMM, x, 1, tag=5)
        elif RANK == 1:
            p2p.recv(COMM, y, 0, tag=5)
    if RANK == (0 if P == 1 else 1) and not np.array_equal(y, np.arange(12.0).reshape(3, 4)):
        problems.append(f"received {y}")
    ops = sorted(r["op"] for r in led.records)
    want = {0: ["send"] + (["recv"] if P == 1 else []), 1: ["recv"]}.get(RANK, [])
    if ops != sorted(want):
        problems.append(f"records {ops}, want {want}")
    all_ranks_ok(problems)


@pytest.mark.mpi
@pytest.mark.parametrize("buffer_count", [5, 9], ids=["buffer-too-small", "buffer-too-large"])
def test_a_message_of_the_wrong_size_is_a_clear_error(buffer_count):
    problems = []
    with CommLedger() as led:
        r = p2p.irecv(COMM, np.zeros(buffer_count, np.float32), LEFT, tag=7)
        s = p2p.isend(COMM, np.ones(7, np.float32), RIGHT, tag=7)
        try:
            p2p.waitall([r, s])
            problems.append(f"no error for 28 bytes into a buffer of {4 * buffer_count}")
        except ValueError as e:
            text = str(e)
            if not (f"from rank {LEFT}" in text and "tag 7" in text and "disagree" in text
                    and str(4 * buffer_count) in text and "float32" in text):
                problems.append(f"unclear message: {text}")
            if buffer_count > 7 and "28 bytes arrived" not in text:
                problems.append(f"the short message's size is not named: {text}")
        if not (s.done and r.done):
            problems.append("a message was left in flight")
        if [x["op"] for x in led.records] != ["send"]:
            problems.append(f"records {[x['op'] for x in led.records]}: a failed receive was recorded")
        # the pair is still usable afterwards: nothing was left behind on the tag
        ok = np.zeros(7, np.float32)
        p2p.waitall([p2p.irecv(COMM, ok, LEFT, tag=7), p2p.isend(COMM, np.full(7, 2.0, np.float32),
                                                                 RIGHT, tag=7)])
        if not (ok == 2).all():
            problems.append(f"the next message on the tag is wrong: {ok}")
    all_ranks_ok(problems)


@pytest.mark.mpi
@pytest.mark.parametrize("call", [
    lambda c: p2p.isend(c, [1.0, 2.0], 0),
    lambda c: p2p.isend(c, np.zeros((4, 4))[:, 1], 0),
    lambda c: p2p.irecv(c, np.broadcast_to(np.zeros(1), (3,)), 0),
    lambda c: p2p.isend(c, np.array([None, 1]), 0),
    lambda c: p2p.isend(c, np.zeros(2), P),
    lambda c: p2p.irecv(c, np.zeros(2), -1),
    lambda c: p2p.isend(c, np.zeros(2), True),
    lambda c: p2p.isend(c, np.zeros(2), 0, tag=-1),
    lambda c: p2p.isend(c, np.zeros(2), 0, tag=1.5),
    lambda c: p2p.irecv(c, np.zeros(2), 0, tag=p2p._tag_ub() + 1),
], ids=["list", "strided", "read-only", "object", "dest-too-big", "source-negative", "dest-bool",
        "tag-negative", "tag-float", "tag-too-big"])
def test_bad_calls_raise_before_any_message(call):
    with pytest.raises(ValueError, match=r"^(isend|irecv): "):
        call(NoMessages(COMM))  # any use of the communicator beyond its size would fail


@pytest.mark.mpi
def test_test_polls_and_a_second_wait_records_nothing():
    problems = []
    buf = np.zeros(3, np.int32)
    with CommLedger() as led:
        r = p2p.irecv(COMM, buf, LEFT, tag=11)
        if p2p.test(r):  # the left neighbour sends only after the barrier
            problems.append("test() was true before anything was sent")
        COMM.Barrier()
        s = p2p.isend(COMM, np.full(3, RANK, np.int32), RIGHT, tag=11)
        while not p2p.test(r):
            pass
        if r.wait() is not buf or p2p.wait(r) is not buf or not (buf == LEFT).all():
            problems.append(f"wait after test: {buf}")
        p2p.wait(s)
        p2p.wait(s)
    if sorted(x["op"] for x in led.records) != ["recv", "send"]:
        problems.append(f"records {[x['op'] for x in led.records]}")
    if "done" not in repr(r) or f"from rank {LEFT}" not in repr(r):
        problems.append(repr(r))
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_ledgers_open_at_completion_record_it_and_summary_rows():
    problems = []
    x, y = np.ones(256, np.float32), np.empty(256, np.float32)
    p2p.waitall([p2p.irecv(COMM, y, LEFT), p2p.isend(COMM, x, RIGHT)])  # no ledger: nothing
    with CommLedger() as outer:
        with CommLedger() as inner:
            p2p.waitall([p2p.irecv(COMM, y, LEFT), p2p.isend(COMM, x, RIGHT)])
        r, s = p2p.irecv(COMM, y, LEFT, tag=1), p2p.isend(COMM, x, RIGHT, tag=1)
        with CommLedger() as late:  # open when they complete, not when they were posted
            p2p.waitall([r, s])
    if (len(outer.records), len(inner.records), len(late.records)) != (4, 2, 2):
        problems.append(f"records {len(outer.records)}, {len(inner.records)}, {len(late.records)}")
    totals = outer.totals()
    sends, recvs = totals.get(("send", f"p2p to rank {RIGHT}")), totals.get(("recv", f"p2p from rank {LEFT}"))
    if sends is None or recvs is None:
        problems.append(f"groups {list(totals)}")
    else:
        keys = ("calls", "bytes_sent", "messages", "bytes_received")
        if [sends[k] for k in keys] != [2, 2048, 2, 0]:
            problems.append(f"send group {sends}")
        if [recvs[k] for k in keys] != [2, 0, 0, 2048]:
            problems.append(f"recv group {recvs}")
    text = outer.summary()
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["send"], ["recv"])}
    if f"p2p to rank {RIGHT}" not in rows.get("send", "") \
            or f"p2p from rank {LEFT}" not in rows.get("recv", ""):
        problems.append(f"summary rows:\n{text}")
    elif "2 KiB" not in rows["send"] or "0 B" not in rows["recv"]:
        problems.append(f"summary bytes:\n{text}")
    if "counted as sent by the sender only" not in text:
        problems.append("summary does not say how send/recv are counted")
    all_ranks_ok(problems)


@pytest.mark.mpi
@pytest.mark.parametrize("pp", [q for q in range(1, P + 1) if P % q == 0])
def test_a_pipeline_along_the_mesh(pp):
    """Activations down pp_comm, gradients back up, the tied-embedding sum over embedding_comm."""
    problems = []
    with Mesh.build(COMM, pp=pp) as mesh, CommLedger() as led:
        stage, comm = mesh.pp_rank, mesh.pp_comm
        act = np.zeros((2, 3), np.float64)
        if stage > 0:
            p2p.recv(comm, act, stage - 1, tag=0)
        act += stage + 1  # this stage's "layer"
        if stage < pp - 1:
            p2p.send(comm, act, stage + 1, tag=0)
        grad = np.full((2, 3), float(pp * (pp + 1) // 2)) if mesh.is_last_stage else np.empty((2, 3))
        if stage < pp - 1:
            p2p.recv(comm, grad, stage + 1, tag=1)
        if stage > 0:
            p2p.send(comm, grad, stage - 1, tag=1)
        if not (act == (stage + 1) * (stage + 2) / 2).all() or not (grad == pp * (pp + 1) / 2).all():
            problems.append(f"stage {stage}: act {act[0, 0]}, grad {grad[0, 0]}")
        if mesh.in_embedding_group:  # first and last stage hold one each: exchange and sum
            peer = mesh.embedding_comm.Get_size() - 1 - mesh.embedding_comm.Get_rank()
            mine, theirs = np.full(4, float(stage), np.float32), np.empty(4, np.float32)
            p2p.waitall([p2p.irecv(mesh.embedding_comm, theirs, peer, tag=2),
                         p2p.isend(mesh.embedding_comm, mine, peer, tag=2)])
            total = mine + theirs if pp > 1 else mine
            if not (total == pp - 1).all():
                problems.append(f"embedding sum {total}")
        hops = sum(r["op"] == "send" and r["tag"] < 2 for r in led.records)
        if hops != (stage > 0) + (stage < pp - 1):
            problems.append(f"stage {stage} sent {hops} pipeline messages")
    all_ranks_ok(problems)
