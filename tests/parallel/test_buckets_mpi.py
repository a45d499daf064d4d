"""GradBuckets against the blocking ring allreduce of each bucket.

A bucket's non-blocking ring (tests/collectives/test_nonblocking_mpi.py) does the
blocking ring's combines in the same order, so the comparisons are bitwise. Ranks
are put out of step on purpose (a different amount of NumPy work between polls on
each rank). Each test gathers every rank's problems and asserts on the whole
list, so all ranks pass or fail together.
"""
import time
import zlib

from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allreduce
from mpipar.collectives.progress import thread_level_problem
from mpipar.measure.numerics import bitwise_equal
from mpipar.parallel.buckets import GradBuckets
from mpipar.parallel.mesh import Mesh

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
WORK = np.random.default_rng(RANK).standard_normal((48, 48))


def sample(key, shape, dtype, comm=COMM, integers=False):
    """This rank's data, different on every rank of ``comm``."""
    rng = np.random.default_rng([zlib.crc32(repr(key).encode()), comm.Get_rank()])
    v = rng.integers(-50, 50, shape) if integers else rng.standard_normal(shape)
    return v.astype(dtype)


def busy(k):
    """A little NumPy work, more on higher ranks, so the ranks drift apart."""
    for _ in range(k):
        WORK @ WORK


SHAPES = [("head.w", (10, 8)), ("head.b", (8,)), ("big", (200,)), ("l1.w", (5, 5)),
          ("l1.b", (5,)), ("empty", (0,)), ("l0.w", (3, 70)), ("l0.b", ())]


@pytest.mark.mpi
def test_bucket_assignment():
    # float32, 400-byte buckets: 320+32 | 800 (too big: alone) | 100+20+0 | 840 (alone) | 4
    gb = GradBuckets(COMM, SHAPES, bucket_bytes=400)
    assert gb.buckets == [["head.w", "head.b"], ["big"], ["l1.w", "l1.b", "empty"], ["l0.w"],
                          ["l0.b"]]
    assert [b.nbytes for b in gb.buffers] == [352, 800, 120, 840, 4]
    assert gb.view("l0.w").shape == (3, 70) and gb.view("l0.b").shape == ()
    assert np.shares_memory(gb.view("l1.b"), gb.buffers[2]) and gb.bucket_of("big") == 1
    assert gb.view("l1.b").base is not None and gb.buffers[0].flags.c_contiguous
    assert [len(b) for b in GradBuckets(COMM, SHAPES, 1).buckets] == [1] * len(SHAPES)
    assert GradBuckets(COMM, dict(SHAPES), 10**9, np.float64).buckets == [[n for n, _ in SHAPES]]


def backward(gb, grads, poll=True):
    """Synthetic backward: gradients appear in ready order with work in between."""
    for k, (name, g) in enumerate(grads.items()):
        busy(1 + RANK % 2)
        if k % 2:
            gb.view(name)[...] = g  # written in place, as a real backward would
            gb.ready(name)
        else:
            gb.ready(name, g)
        if poll:
            gb.progress()


def expected(comm, gb, grads, average):
    """Blocking ring allreduce of each bucket's concatenated gradients (then / p)."""
    out = {}
    for names in gb.buckets:
        flat = np.concatenate([grads[n].reshape(-1) for n in names])
        total = allreduce(comm, flat, algorithm="ring")
        if average:
            total = total / total.dtype.type(comm.Get_size())
        pos = 0
        for n in names:
            out[n] = total[pos:pos + grads[n].size].reshape(grads[n].shape)
            pos += grads[n].size
    return out


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finish_equals_blocking_ring_and_overlap_changes_nothing(dtype):
    problems, results = [], {}
    grads = {n: sample(("grad", n), s, dtype) for n, s in SHAPES}
    modes = (True, False, "thread") if thread_level_problem() is None else (True, False)
    for overlap in modes:
        for average in (True, False):
            gb = GradBuckets(COMM, SHAPES, 400, dtype, overlap=overlap)
            t0 = time.perf_counter()
            backward(gb, grads)
            t_finish = time.perf_counter()
            got = gb.finish(average=average)
            results[overlap, average] = {n: g.copy() for n, g in got.items()}
            want = expected(COMM, gb, grads, average)
            if list(got) != [n for n, _ in SHAPES]:
                problems.append(f"names {list(got)}")
            problems += [f"overlap={overlap} average={average}: {n} differs"
                         for n in want if not bitwise_equal(got[n], want[n])]
            line = gb.timeline(t0)
            if [e["nbytes"] for e in line] != [b.nbytes for b in gb.buffers]:
                problems.append(f"timeline {line}")
            for e in line:
                if not 0 <= e["ready"] <= e["start"] <= e["end"]:
                    problems.append(f"overlap={overlap}: times out of order {e}")
                elif overlap != "thread" and overlap != (e["start"] < t_finish - t0):
                    problems.append(f"overlap={overlap}: bucket {e['bucket']} started at "
                                    f"{e['start']:.4f}, finish() called at {t_finish - t0:.4f}")
            gb.close()
    for average in (True, False):
        problems += [f"overlap {mode}/False differ in {n}" for mode in modes[:1] + modes[2:]
                     for n in grads
                     if not bitwise_equal(results[mode, average][n], results[False, average][n])]
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_integer_valued_gradients_match_per_gradient_allreduce():
    """With exact sums the bucketing cannot show: each gradient equals its own allreduce / p."""
    grads = {n: sample(("int", n), s, np.float32, integers=True) for n, s in SHAPES}
    gb = GradBuckets(COMM, SHAPES, 400)
    backward(gb, grads)
    got = gb.finish()
    bad = [n for n, g in grads.items()
           if not bitwise_equal(got[n], allreduce(COMM, g, algorithm="ring") / np.float32(P))]
    all_ranks_ok(bad)


@pytest.mark.mpi
def test_two_steps_on_the_data_parallel_axis_of_a_mesh():
    """Buckets reused for a second step (reset), over a mesh's dp_comm."""
    problems = []
    with Mesh.build(COMM, tp=2 if P % 2 == 0 else 1) as mesh:
        gb = GradBuckets(mesh.dp_comm, SHAPES, 256)
        for step in range(2):
            grads = {n: sample(("step", step, mesh.tp_rank, n), s, np.float32, mesh.dp_comm)
                     for n, s in SHAPES}
            gb.reset()
            backward(gb, grads, poll=step == 0)
            got = gb.finish()
            want = expected(mesh.dp_comm, gb, grads, True)
            problems += [f"step {step}: {n}" for n in want if not bitwise_equal(got[n], want[n])]
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_misuse_is_reported():
    gb = GradBuckets(COMM, SHAPES, 400)
    gb.ready("head.w", np.zeros((10, 8)))
    with pytest.raises(ValueError, match="already"):
        gb.ready("head.w")
    with pytest.raises(ValueError, match="shape"):
        gb.ready("head.b", np.zeros(9))
    with pytest.raises(KeyError):
        gb.ready("nope")
    with pytest.raises(RuntimeError, match="before these were ready"):
        gb.finish()
    for name, _ in SHAPES[1:]:
        gb.ready(name)
    gb.finish()
    with pytest.raises(RuntimeError, match="twice"):
        gb.finish()  # would divide by p a second time
    for bad in (dict(bucket_bytes=0), dict(dtype=np.int32), dict(shapes=SHAPES + SHAPES[:1])):
        args = dict(shapes=SHAPES, bucket_bytes=400) | bad
        with pytest.raises(ValueError, match="GradBuckets"):
            GradBuckets(COMM, **args)


@pytest.mark.mpi
@pytest.mark.skipif(P == 1, reason="one rank cannot disagree with itself")
def test_ranks_that_disagree_on_the_layout_raise_the_same_error():
    try:
        GradBuckets(COMM, SHAPES, 400 if RANK else 512)
        message = None
    except ValueError as e:
        message = str(e)
    messages = COMM.allgather(message)
    assert message is not None and "disagree" in message
    assert all(m == messages[0] for m in messages)


@pytest.mark.mpi
def test_rings_in_flight_together_change_no_bit():
    """in_flight 1 (one ring after another), 2 and every bucket at once, polled and on the
    thread, against the blocking ring of each bucket; a second step reuses the buckets."""
    problems = []
    modes = ("poll", "thread") if thread_level_problem() is None else ("poll",)
    for overlap in modes:
        for in_flight in (1, 2, None):
            with GradBuckets(COMM, SHAPES, 300, overlap=overlap, in_flight=in_flight) as gb:
                for step in range(2):
                    grads = {n: sample(("flight", step, n), s, np.float32) for n, s in SHAPES}
                    gb.reset()
                    backward(gb, grads, poll=step == 0)
                    got, want = gb.finish(), expected(COMM, gb, grads, True)
                    problems += [f"{overlap} in_flight={in_flight} step {step}: {n}" for n in want
                                 if not bitwise_equal(got[n], want[n])]
                most = gb._driver.most_in_flight
                if in_flight and most > in_flight:
                    problems.append(f"{overlap}: {most} rings in flight, at most {in_flight} asked")
    with pytest.raises(ValueError, match="in_flight must be"):
        GradBuckets(COMM, SHAPES, 300, in_flight=0)
    all_ranks_ok(problems)
