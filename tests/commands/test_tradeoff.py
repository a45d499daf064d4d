"""python -m mpipar.bench tradeoff as a notebook runs it: its JSON keeps the contract.

These tests launch mpirun themselves (through ``mpipar.launch``), so they are
ordinary pytest tests, not ``mpi``-marked ones. Small settings keep a job to
seconds on two cores. Nothing here asserts on time.
"""
import pytest

from mpipar import launch
from mpipar.bench.tradeoff import ORDER_ALGORITHMS, ROW_KEYS, settings

SMALL = ["tradeoff", "--trials", "1", "--order-size", "5000", "--batch", "200"]
HIST = ["0", "1", "2", "3-4", "5-8", ">8"]


@pytest.fixture(scope="module", params=[2, 3])
def job(request):
    return launch.run("mpipar.bench", n=request.param, args=SMALL, timeout=240)


def test_one_row_per_setting_with_every_key(job):
    data, n = job.data, job.data["world_size"]
    assert {"rows", "order", "world_size", "model", "settings", "evaluation"} <= set(data)
    assert data["evaluation"] == {"batch": 200, "seq": 13, "positions": 200 * 13}
    rows = data["rows"]
    assert [(r["comm_dtype"], r["rounding"], r["algorithm"], r["deterministic"]) for r in rows] \
        == settings()
    assert ("float32", "none", "ring", True) in settings() and len(rows) == 9
    for r in rows:
        assert set(ROW_KEYS) <= set(r), set(ROW_KEYS) - set(r)
        assert r["ranks_agree"] is True, r
        assert r["seconds"] > 0 and r["bytes"] > 0
        assert 0 <= r["top1_agreement"] <= 1 and 0 <= r["task_accuracy"] <= 1
    assert "tradeoff: the shipped addition model" in job.stdout and f"on {n} rank(s)" in job.stdout
    assert "reduction order alone" in job.stdout


def test_bytes_follow_the_wire(job):
    """16-bit per-hop rows send exactly half of the float32 row of the same algorithm (every
    message is 2-byte); once sends 3/4 in the reductions (a 4-byte reduce-scatter and a
    2-byte allgather) and half in the logit gather."""
    rows = {(r["comm_dtype"], r["rounding"], r["algorithm"], r["deterministic"]): r
            for r in job.data["rows"]}
    for alg in ("ring", "recursive_doubling"):
        f32 = rows["float32", "none", alg, False]
        for wire in ("float16", "bfloat16"):
            per_hop = rows[wire, "per_hop", alg, False]
            assert per_hop["bytes"] < f32["bytes"] and 2 * per_hop["bytes"] == f32["bytes"]
    for wire in ("float16", "bfloat16"):
        once = rows[wire, "once", "ring", False]["traffic"]
        f32 = rows["float32", "none", "ring", False]["traffic"]
        assert 4 * once[f"allreduce ring {wire}/once"] == 3 * f32["allreduce ring"]
        assert 2 * once["allgather ring"] == f32["allgather ring"]
    # deterministic: an allgather of the p partials (p (p-1) n elements sent in all) instead
    # of a ring allreduce (2 (p-1) n): p/2 times the bytes -- the same at p = 2
    det, f32, p = rows["float32", "none", "ring", True], rows["float32", "none", "ring", False], \
        job.data["world_size"]
    assert list(det["traffic"]) == ["allgather ring"]
    assert 2 * det["bytes"] == p * f32["traffic"]["allreduce ring"] + 2 * f32["traffic"]["allgather ring"]


def test_accuracy_columns(job):
    data = job.data
    serial = data["model"]["task_accuracy_serial"]
    assert serial == 1.0  # the shipped model answers every held-out sum
    for r in data["rows"]:
        # in units of the wire's own u the error is of one size for every wire: the
        # 16-bit rows' error is the float32 rows' scaled by u16/u32, nothing worse
        assert r["max_normalized_error_wire"] < 200, r
        if r["comm_dtype"] == "float32":
            assert r["max_normalized_error"] == r["max_normalized_error_wire"] < 200
            assert r["top1_agreement"] > 0.999 and r["task_accuracy"] == serial
        else:
            assert r["max_normalized_error"] > 100  # a 16-bit wire is not float32
    det = [r for r in data["rows"] if r["deterministic"]]
    assert det[0]["bitwise_equal_emulated"] is True
    assert all(r["bitwise_equal_emulated"] is None for r in data["rows"] if not r["deterministic"])


def test_reduction_order_table(job):
    """naive reduces at rank 0 in rank order, ((x_0 + x_1) + x_2) + ..., exactly like the
    serial sum: bitwise equal everywhere. At p = 2 every algorithm computes x_0 + x_1
    (addition commutes). At p = 3 the tree is (x_0 + x_1) + x_2 too, while the ring
    finishes block 0 as (x_1 + x_2) + x_0 and recursive doubling folds rank 2 onto rank 0
    first: (x_0 + x_2) + x_1."""
    data = job.data
    n, p = data["settings"]["order_size"], data["world_size"]
    order = {r["algorithm"]: r for r in data["order"]}
    assert list(order) == list(ORDER_ALGORITHMS)
    for r in order.values():
        assert list(r["ulp_histogram"]) == HIST and sum(r["ulp_histogram"].values()) == n
        assert r["ulp_histogram"]["0"] == round(r["bitwise_fraction"] * n)
        assert r["bound"] == p - 1 and 0 <= r["max_normalized_error"] <= p - 1
        assert r["ranks_agree"] is True
    same = {"naive", "tree", "ring", "recursive_doubling"} if p == 2 else {"naive", "tree"}
    for alg, r in order.items():
        if alg in same:
            assert r["bitwise_fraction"] == 1.0 and r["max_ulp"] == 0, r
        else:
            assert r["bitwise_fraction"] < 1.0 and r["max_ulp"] > 0, r
    assert order["naive"]["max_normalized_error"] == data["order_serial_max_normalized_error"]


def test_bad_options_give_one_clear_error():
    job = launch.run("mpipar.bench", n=2, args=["tradeoff", "--seq", "4"], check=False, timeout=60)
    assert job.returncode == 2 and job.data is None
    assert job.stderr.count("error: --seq is for random tokens") == 1, job.stderr
