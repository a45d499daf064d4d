"""The progress engine: collectives on a communication thread keep their bits, data-parallel
training with the thread equals training without overlap bitwise after every step, errors on
the thread reach the main thread, and the thread stops.

The jobs run the very functions the main thread would run (the same ring steps and combines,
in the same bucket order), so every comparison is bitwise. Each test gathers every rank's
problems and asserts on the whole list, so all ranks pass or fail together.
"""
import gc
import sys
import threading

from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allreduce
from mpipar.collectives.allreduce import ALGORITHMS
from mpipar.collectives.nonblocking import RingAllreduce
from mpipar.collectives.progress import LEVELS, ProgressEngine, thread_level, thread_level_problem
from mpipar.measure.numerics import bitwise_equal
from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models.checkpoint import full_params
from mpipar.models.optim import AdamW
from mpipar.parallel.data_parallel import DataParallel
from mpipar.parallel.mesh import Mesh
from mpipar.tasks.addition import AdditionTask

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
MULTIPLE = thread_level_problem("multiple") is None
needs_multiple = pytest.mark.skipif(not MULTIPLE, reason="this MPI has no MPI_THREAD_MULTIPLE")


@pytest.mark.mpi
def test_thread_level_is_checked():
    assert thread_level() in LEVELS and "level must be" in thread_level_problem("funneled")
    if MULTIPLE:
        assert thread_level_problem("serialized") is None
    else:  # the engine refuses to start, saying what is missing
        with pytest.raises(ValueError, match="MPI_THREAD_MULTIPLE"):
            ProgressEngine()


@pytest.mark.mpi
@needs_multiple
def test_collectives_on_the_thread_keep_their_bits():
    """Every all-reduce algorithm and the non-blocking ring, run as queued jobs on a
    duplicate communicator while the main thread computes, against the main thread's call."""
    rng = np.random.default_rng(RANK)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, P + 1, 1000)]
    work = rng.standard_normal((64, 64))
    problems = []
    with ProgressEngine() as engine:
        dup = COMM.Dup()
        jobs = [(alg, x, engine.submit(allreduce, dup, x, "sum", alg, check=False))
                for alg in ALGORITHMS for x in xs]
        rings = [(x, engine.submit(RingAllreduce(dup, x, tag=7 + k).wait, 1e-5 if k % 2 else None))
                 for k, x in enumerate(xs)]
        for _ in range(20):
            work = np.tanh(work @ work)  # the main thread computes meanwhile
        got = [(alg, x, job.wait()) for alg, x, job in jobs]
        got_rings = [(x, job.wait()) for x, job in rings]
        dup.Free()
    problems += [f"{alg} n={x.size}" for alg, x, y in got
                 if not bitwise_equal(y, allreduce(COMM, x, "sum", alg))]
    problems += [f"ring job n={x.size}" for x, y in got_rings
                 if not bitwise_equal(y, allreduce(COMM, x, "sum", "ring"))]
    all_ranks_ok(problems)


@pytest.mark.mpi
@needs_multiple
def test_an_error_on_the_thread_is_raised_at_the_next_wait_and_stops_the_queue():
    ran = []

    def boom():
        raise ZeroDivisionError("bad bucket")

    engine = ProgressEngine(abort_after=None)
    first = engine.submit(ran.append, 1)
    failed = engine.submit(boom, what="the test's job")
    later = engine.submit(ran.append, 2)
    assert first.wait() is None
    for job in (failed, later):
        with pytest.raises(RuntimeError) as info:
            job.wait()
        assert str(info.value) == (f"progress engine (rank {RANK}): the test's job failed on the "
                                   "communication thread: ZeroDivisionError: bad bucket")
        assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert ran == [1]  # nothing runs after a failure: its peers may be gone
    engine.close()
    assert not engine.alive


@pytest.mark.mpi
@needs_multiple
def test_close_lets_queued_jobs_finish_and_stops_the_thread():
    before = threading.active_count()
    with ProgressEngine() as engine:
        gate = threading.Event()
        jobs = [engine.submit(gate.wait), engine.submit(lambda: 42)]
        gate.set()
    assert not engine.alive and all(j.done for j in jobs) and jobs[1].wait() == 42
    engine.close()  # twice: nothing happens
    with pytest.raises(RuntimeError, match="after close"):
        engine.submit(print)
    assert threading.active_count() == before


@pytest.mark.mpi
@needs_multiple
def test_an_engine_nobody_holds_stops_its_thread_and_the_switch_interval_comes_back():
    interval = sys.getswitchinterval()
    engine = ProgressEngine(switch_interval=interval / 7, name="mpipar-progress-dropped")
    assert engine.submit(sum, [1, 2]).wait() == 3
    assert sys.getswitchinterval() == pytest.approx(interval / 7, abs=1e-6)  # Python keeps µs
    del engine
    gc.collect()
    for thread in threading.enumerate():
        if thread.name == "mpipar-progress-dropped":
            thread.join(10)
    assert "mpipar-progress-dropped" not in [t.name for t in threading.enumerate()]
    assert sys.getswitchinterval() == interval


TASK = AdditionTask(digits=2, seed=0, heldout=100)
CFG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, n_embd=16, n_head=2, n_layer=2)


@pytest.mark.mpi
@needs_multiple
def test_thread_poll_and_no_overlap_train_to_identical_parameters_every_step():
    """Three trainers from the same weights on the same batches (10 examples: uneven shards
    at p = 3, 4), tiny buckets so every layer ends several; with tp = 2 where p is even, so
    the main thread all-reduces over tp while the engine's thread works on dp."""
    problems = []
    with Mesh.build(COMM, tp=2 if P % 2 == 0 else 1) as mesh:
        trainers = {}
        for mode in ("none", "poll", "thread"):
            model = GPT(CFG, init_params(CFG, 0), mesh.tp_comm, algorithm="ring")
            trainers[mode] = DataParallel(model, mesh.dp_comm, AdamW(model, lr=3e-3),
                                          bucket_bytes=512, overlap=mode)
        for step in range(3):
            out = {mode: t.step(TASK.batch(step, 10), TASK.loss_mask())
                   for mode, t in trainers.items()}
            params = {mode: full_params(t.model) for mode, t in trainers.items()}
            for mode in ("poll", "thread"):
                if out[mode]["loss"] != out["none"]["loss"]:
                    problems.append(f"step {step} {mode}: loss {out[mode]['loss']}")
                problems += [f"step {step} {mode}: {name} differs" for name in params["none"]
                             if not bitwise_equal(params[mode][name], params["none"][name])]
            line = out["thread"]["timeline"]
            if mesh.dp > 1 and not (line and all(e["ready"] <= e["start"] <= e["end"] for e in line)):
                problems.append(f"step {step}: thread timeline {line}")
        for t in trainers.values():
            t.close()
        if trainers["thread"].buckets is not None and trainers["thread"].buckets.engine.alive:
            problems.append("close() left the communication thread running")
    all_ranks_ok(problems)
