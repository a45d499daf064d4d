"""CommLedger records what each call cost; it nests; it predicts with its own model."""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allgather, allreduce, broadcast
from mpipar.collectives.channel import Channel
from mpipar.measure import ledger
from mpipar.measure.ledger import CommLedger, CostModel

KEYS = {"op", "algorithm", "dtype", "nbytes", "bytes_sent", "messages", "steps", "seconds",
        "predicted_seconds", "world_size", "rank"}


@pytest.mark.mpi
def test_records_every_call_with_its_costs():
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    x = np.ones(1000, np.float32)
    with CommLedger() as led:
        allreduce(comm, x, algorithm="ring")
        allreduce(comm, x, algorithm="mpi")
        broadcast(comm, x, algorithm="binomial")
    recs = led.to_dict()["records"]
    assert [r["op"] for r in recs] == ["allreduce", "allreduce", "broadcast"]
    assert all(KEYS <= set(r) for r in recs)
    ring = recs[0]
    assert ring["nbytes"] == 4000 and ring["dtype"] == "float32" and ring["world_size"] == p
    assert ring["messages"] == 2 * (p - 1) and ring["steps"] == 2 * (p - 1)
    assert ring["predicted_seconds"] == CostModel().predict("allreduce", "ring", p, 4000)
    assert ring["seconds"] > 0
    assert recs[1]["bytes_sent"] is None  # the library does not say what it sent
    text = led.summary()
    assert "allreduce" in text and "ring" in text and "broadcast" in text and "total" in text


@pytest.mark.mpi
def test_nested_ledgers_and_own_models():
    comm = MPI.COMM_WORLD
    slow = CostModel(alpha=1.0, beta=1.0, gamma=1.0, source="made up")
    with CommLedger() as outer:
        allgather(comm, np.arange(3), algorithm="ring")
        with CommLedger(cost_model=slow) as inner:
            allreduce(comm, np.arange(3), algorithm="tree")
        allreduce(comm, np.arange(3), algorithm="naive")
    assert len(outer.records) == 3 and len(inner.records) == 1
    assert inner.records[0]["algorithm"] == "tree"
    p = comm.Get_size()
    assert inner.records[0]["predicted_seconds"] == slow.predict("allreduce", "tree", p, 24)
    assert outer.records[1]["predicted_seconds"] == CostModel().predict("allreduce", "tree", p, 24)
    # closed ledgers record nothing
    allreduce(comm, np.arange(3))
    assert len(outer.records) == 3


@pytest.mark.mpi
def test_auto_records_the_algorithm_it_chose():
    comm = MPI.COMM_WORLD
    with CommLedger() as led:
        allreduce(comm, np.ones(4, np.float32))
    rec = led.records[0]
    assert rec["requested"] == "auto"
    assert rec["algorithm"] == CostModel().best("allreduce", comm.Get_size(), 16)


@pytest.mark.mpi
def test_trace_lists_every_message():
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    with CommLedger(trace=True) as led:
        allreduce(comm, np.ones(4 * p, np.float64), algorithm="ring")
    trace = led.records[0]["trace"]
    assert len(trace) == led.records[0]["messages"]
    assert all(src == rank and dst == (rank + 1) % p and nb == 32 for _, src, dst, nb in trace)
    assert [step for step, *_ in trace] == list(range(1, 2 * (p - 1) + 1))


@pytest.mark.mpi
def test_one_builder_makes_every_record():
    """record_call: the channel's traffic (None for the library), requested defaulting to
    the algorithm, extra keys kept; nothing at all without an open ledger."""
    comm = MPI.COMM_WORLD
    ch = Channel(comm)
    ch.step()
    ch.bytes_sent, ch.messages = 12, 3
    ledger.record_call(ch, "allreduce", "ring", np.dtype(np.float32), 3, 12, 0.5)  # not open: dropped
    with CommLedger() as led:
        ledger.record_call(ch, "allreduce", "ring", np.dtype(np.float32), 3, 12, 0.5, nonblocking=True)
        ledger.record_call(ch, "broadcast", "mpi", np.dtype(np.int64), 2, 16, 0.25, requested="auto",
                           library=True)
    ring, lib = led.records
    assert KEYS | {"requested", "count"} <= set(ring) and ring["nonblocking"] is True
    assert (ring["requested"], ring["dtype"], ring["count"], ring["nbytes"]) == ("ring", "float32", 3, 12)
    assert (ring["bytes_sent"], ring["messages"], ring["steps"]) == (12, 3, 1)
    assert (ring["world_size"], ring["rank"], ring["seconds"]) == (comm.Get_size(), comm.Get_rank(), 0.5)
    assert (lib["requested"], lib["dtype"]) == ("auto", "int64")
    assert lib["bytes_sent"] is lib["messages"] is lib["steps"] is None


@pytest.mark.mpi
def test_messages_beside_collectives_every_byte_once():
    """p2p records: the sender's bytes in bytes_sent, the receiver's in bytes_received; grouped
    per peer; collectives keep bytes_received None (they count only what they send)."""
    from mpipar.parallel import p2p
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    x, y = np.arange(100, dtype=np.float64), np.empty(100, np.float64)
    with CommLedger(trace=True) as led:
        allreduce(comm, np.ones(8, np.float32), algorithm="ring")
        p2p.waitall([p2p.irecv(comm, y, (rank - 1) % p, tag=3), p2p.isend(comm, x, (rank + 1) % p, tag=3)])
    recs = {r["op"]: r for r in led.records}
    assert recs["send"]["trace"] == [(1, rank, (rank + 1) % p, 800)]
    assert recs["recv"]["trace"] == []
    totals = led.totals()
    assert totals[("allreduce", "ring")]["bytes_received"] is None
    send = totals[("send", f"p2p to rank {(rank + 1) % p}")]
    recv = totals[("recv", f"p2p from rank {(rank - 1) % p}")]
    assert (send["bytes_sent"], send["bytes_received"], send["messages"]) == (800, 0, 1)
    assert (recv["bytes_sent"], recv["bytes_received"], recv["messages"]) == (0, 800, 0)
    assert recv["predicted_seconds"] == CostModel().predict("recv", "p2p", p, 800)
    on_wire = comm.allreduce(sum(r["bytes_sent"] for r in led.records))
    ring = comm.allreduce(led.records[0]["bytes_sent"])
    assert on_wire == ring + 800 * p == ring + comm.allreduce(recv["bytes_received"])
    lines = led.summary().splitlines()
    assert any(line.startswith("recv") and "p2p from rank" in line for line in lines)
    assert any(line.startswith("send") and "p2p to rank" in line for line in lines)
