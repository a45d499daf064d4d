"""The benchmark command as a notebook runs it: its JSON rows keep the contract.

These tests launch mpirun themselves (through ``mpipar.launch``), so they are
ordinary pytest tests, not ``mpi``-marked ones. Tiny settings keep each job to a
few seconds on two cores.
"""
import json
import math
import os
import subprocess
import sys

from jobs import assert_one_clear_error
import pytest

from mpipar import launch
from mpipar.collectives import ALGORITHMS
from mpipar.measure.cost_model import CostModel

TINY = ["collectives", "--max-size", "4KiB", "--trials", "2", "--no-calibrate", "--quiet"]
NOMINAL_SIZES = [8, 64, 512, 4096]  # 8 B * 8^k up to 4 KiB
ROW_KEYS = {"op", "algorithm", "bytes", "count", "seconds", "seconds_min", "seconds_max", "trials",
            "iterations", "busbw_GBps", "predicted_seconds", "lower_bound_seconds", "ratio_to_mpi",
            "pred_over_meas"}
# nccl-tests PERFORMANCE.md: busbw = S/t * factor; written out here, apart from the bench's
# mpipar.measure.cost_model.bandwidth_factor, as an independent check of it
BUSBW_FACTOR = {"allreduce": lambda p: 2 * (p - 1) / p, "allgather": lambda p: (p - 1) / p,
                "reduce_scatter": lambda p: (p - 1) / p, "broadcast": lambda p: 1.0}


def payload_bytes(op, nominal, p, itemsize=4):
    """The payload the bench must report: allgather's ranks each give S/p whole elements."""
    count = nominal // itemsize
    if op == "allgather":
        return max(1, round(count / p)) * p * itemsize
    return count * itemsize


@pytest.mark.parametrize("n", [2, 3])
def test_rows_keep_the_contract(n):
    job = launch.run("mpipar.bench", n=n, args=TINY, timeout=120)
    data = job.data
    assert data["benchmark"] == "collectives" and data["world_size"] == n
    assert data["dtype"] == "float32" and isinstance(data["mpi_library"], str)
    assert data["cost_model"]["source"] == "default"
    assert math.isfinite(data["check_overhead_seconds"])
    assert data["settings"]["trials"] == 2 and data["settings"]["sizes"] == NOMINAL_SIZES

    rows = data["rows"]
    assert all(set(r) == ROW_KEYS for r in rows)
    expected = [(op, alg, payload_bytes(op, s, n)) for op, algs in ALGORITHMS.items()
                for alg in (*algs, "mpi") for s in NOMINAL_SIZES]
    assert sorted((r["op"], r["algorithm"], r["bytes"]) for r in rows) == sorted(expected)

    mpi = {(r["op"], r["bytes"]): r["seconds"] for r in rows if r["algorithm"] == "mpi"}
    cost_model = CostModel()
    for r in rows:
        t = r["seconds"]
        assert math.isfinite(t) and 0 < r["seconds_min"] <= t <= r["seconds_max"], r
        assert r["trials"] == 2 and r["iterations"] >= 1 and r["count"] * 4 == r["bytes"]
        busbw = r["bytes"] / t * BUSBW_FACTOR[r["op"]](n) / 1e9
        assert r["busbw_GBps"] == pytest.approx(busbw, rel=1e-9)
        assert r["ratio_to_mpi"] == pytest.approx(t / mpi[(r["op"], r["bytes"])], rel=1e-9)
        assert r["predicted_seconds"] == pytest.approx(
            cost_model.predict(r["op"], r["algorithm"], n, r["bytes"]))
        assert r["lower_bound_seconds"] == pytest.approx(cost_model.lower_bound(r["op"], n, r["bytes"]))

    for op in ALGORITHMS:  # a table per op on stdout, and nothing from the other ranks
        assert job.stdout.count(f"== {op} on {n} rank(s)") == 1
    assert "Traceback" not in job.stdout + job.stderr


def test_without_mpirun_and_without_mpi_rows(tmp_path):
    """One rank, no launcher; without "mpi" in --algorithms the ratio is None."""
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mpipar.bench", "collectives", "--ops", "broadcast,allreduce",
         "--algorithms", "binomial,ring", "--min-size", "8B", "--max-size", "100",
         "--trials", "1", "--warmup", "1", "--no-calibrate", "--quiet", "--json", str(out)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, **launch.ONE_THREAD))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["world_size"] == 1
    assert [(r["op"], r["algorithm"], r["bytes"]) for r in data["rows"]] == [
        ("broadcast", "binomial", 8), ("broadcast", "binomial", 64), ("broadcast", "binomial", 100),
        ("allreduce", "ring", 8), ("allreduce", "ring", 64), ("allreduce", "ring", 100)]
    assert all(r["ratio_to_mpi"] is None for r in data["rows"])


def bench_fails(n, args, message):
    """The bench on ``n`` ranks with exactly ``args`` fails with one usage message."""
    proc = assert_one_clear_error("mpipar.bench", n, args, message, timeout=60)
    assert (proc.stdout + proc.stderr).count("usage:") == 1, proc.stdout + proc.stderr
    return proc


@pytest.mark.parametrize("args, message", [
    (["--ops", "allreduce,bogus"], "unknown op 'bogus'"),
    (["--algorithms", "ring,fancy"], "unknown algorithm 'fancy'"),
    (["--max-size", "4XB"], "not a size: '4XB'"),
    (["--min-size", "1MiB", "--max-size", "4KiB"], "is larger than --max-size"),
])
def test_bad_option_one_message_nonzero_exit(args, message):
    bench_fails(3, ["collectives"] + args, message)


@pytest.mark.parametrize("command", ["collectives", "ledger", "forward", "tp-backward", "dp",
                                     "memory", "tradeoff"])
def test_unwritable_json_fails_before_any_work(command, tmp_path):
    """With their default settings these run for minutes; a --json in a missing folder must
    stop them at once, before a line of results, on every rank alike."""
    path = tmp_path / "missing" / "out.json"
    proc = bench_fails(2, [command, "--json", str(path)], f"cannot write --json {str(path)!r}")
    assert "there is no folder" in proc.stderr and proc.stdout == ""
    assert not path.parent.exists()


def test_ledger_overhead_benchmark_reports_paired_ratio():
    job = launch.run("mpipar.bench", n=2, args=["ledger", "--size", "4KiB", "--trials", "3",
                                                  "--calls", "2"], timeout=120)
    data = job.data
    assert data["benchmark"] == "ledger" and data["world_size"] == 2 and data["bytes"] == 4096
    assert data["seconds_without"] > 0 and data["seconds_with"] > 0
    assert data["record_seconds"] < 1e-3  # far below a millisecond per call
    assert "overhead" in job.stdout


def test_dp_benchmark_times_every_mode_and_the_bucket_timeline():
    job = launch.run("mpipar.bench", n=2, args=["dp", "--preset", "tiny", "--batch", "4",
                                                 "--seq", "8", "--steps", "1", "--bucket-kb", "16",
                                                 "--micro-batches", "2"], timeout=120)
    data = job.data
    assert data["world_size"] == 2 and data["grad_bytes"] > 0 and data["buckets"] > 1
    thread = data["thread_level"] == "multiple"
    whole = ["none", "poll"] + (["thread", "thread-all"] if thread else [])
    micro = ["micro-none", "micro-poll"] + (["micro-thread"] if thread else []) + ["no-sync"]
    assert list(data["modes"]) == list(data["timeline"]) == whole + micro
    assert data["variants"]["no-sync"] == dict(micro_batches=2, sync="last", in_flight=None,
                                               overlap="thread" if thread else "poll")
    assert "M=2: summed, then no_sync" in job.stdout and data["micro_batches"] == 2
    modes = [k for k in whole + micro if data["variants"][k]["overlap"] != "none"]
    modes = [whole[0]] + modes
    for mode in whole + micro:
        m, trials = data["modes"][mode], data["trials"][mode]
        assert m["seconds"] >= m["backward_seconds"] > 0 and len(trials["seconds"]) == 1
        # after the last rank's backward: at most the slowest rank's wait, never negative
        assert 0 <= m["wait_after_last_backward"] <= m["sync_wait_seconds"] + 1e-9
    for mode in modes[1:]:
        summary = data["buckets_during_backward"][mode]
        assert [r["buckets"] for r in summary["per_rank"]] == [data["buckets"]] * 2
        for rank in data["timeline"][mode]:  # times relative to the end of backward
            assert len(rank["buckets"]) == data["buckets"] and rank["backward_seconds"] > 0
            assert all(-rank["backward_seconds"] <= b["ready"] <= b["start"] <= b["end"]
                       for b in rank["buckets"])
        assert summary["fewest"] == min(sum(b["end"] < 0 for b in rank["buckets"])
                                        for rank in data["timeline"][mode])


def test_dp_benchmark_unknown_mode_is_one_clear_error():
    bench_fails(2, ["dp", "--modes", "none,bogus"], "--modes: unknown mode 'bogus'")
    bench_fails(2, ["dp", "--in-flight", "1,0"], "--in-flight wants whole numbers >= 1 or all")
    bench_fails(2, ["dp", "--micro-batches", "9"], "--micro-batches must be in [1, 8]")


@pytest.mark.parametrize("logits", ["sharded", "gathered"])
def test_forward_benchmark_splits_compute_and_communication(logits):
    data = launch.run("mpipar.bench", n=2, args=["forward", "--preset", "tiny", "--seq", "8",
                                                  "--trials", "2", "--logits", logits],
                      timeout=120).data
    assert data["world_size"] == 2 and data["comm_seconds"] > 0
    assert abs(data["seconds"] - data["comm_seconds"] - data["compute_seconds"]) < 1e-12
    # 2 allreduces per layer + the embedding's, of B*T*d float32 each, and the logit gather
    c = data["config"]
    expected = (2 * c["n_layer"] + 1) * 8 * c["n_embd"] * 4
    if logits == "gathered":
        expected += 8 * c["vocab_size"] * 4
    assert data["payload_bytes_per_rank"] == expected
    assert len(data["peak_rss_per_rank"]) == 2 and data["peak_rss_bytes"] == max(data["peak_rss_per_rank"])
    assert data["peak_rss_bytes"] > data["param_bytes_per_rank"]
