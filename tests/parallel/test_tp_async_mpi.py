"""The asynchronous column-parallel backward (mpipar.parallel.tp_async) on the ranks of
COMM_WORLD: with the input gradient reduced on a communication thread, a tiny GPT-2's loss and
every gradient are the same bits as without, in deterministic mode and out of it, with
sequence parallelism and a 16-bit wire; deferred weight gradients keep the same bits; each
column-parallel layer's reduction ran on the thread (none at p = 1)."""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives.progress import ProgressEngine, thread_level_problem
from mpipar.models import GPT, PRESETS, init_params
from mpipar.models.linear import DeferredGrads, column_parallel, column_parallel_backward

COMM = MPI.COMM_WORLD
P = COMM.Get_size()
TINY = PRESETS["tiny"]
PARAMS = init_params(TINY, 0)
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(thread_level_problem() is not None,
                                                  reason="this MPI has no MPI_THREAD_MULTIPLE")]


@pytest.fixture(scope="module")
def engine():
    with ProgressEngine(abort_after=30.0) as e:
        yield e


def batch(seed=0, B=2, T=7):  # T = 7: uneven blocks of positions at p = 2, 3, 4
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, TINY.vocab_size, (B, T + 1))
    return tokens[:, :-1], tokens[:, 1:], np.full((B, T), 1 / (B * T), np.float32)


def problems(a, b):
    """What differs between two (loss, losses, grads) results, bit for bit."""
    out = [] if a[0] == b[0] and np.array_equal(a[1], b[1]) else ["the losses differ"]
    for k, (ga, gb) in enumerate(zip(a[2], b[2])):
        if sorted(ga) != sorted(gb):
            out.append(f"shard {k}: different gradient names")
        out += [f"shard {k}: {n}" for n in sorted(ga) if n in gb and not np.array_equal(ga[n], gb[n])]
    return out


@pytest.mark.parametrize("options", [
    dict(algorithm="auto"), dict(algorithm="ring"), dict(deterministic=True),
    dict(sequence_parallel=True), dict(sequence_parallel=True, deterministic=True),
    dict(algorithm="ring", comm_dtype="bfloat16"),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_async_backward_keeps_every_bit(engine, options):
    model = GPT(TINY, PARAMS, COMM, **options)
    data = batch()
    off = model.loss_and_grads(*data)
    model.tp.engine, model.tp.timings = engine, []
    on = model.loss_and_grads(*data)
    timings, model.tp.engine, model.tp.timings = model.tp.timings, None, None
    again = model.loss_and_grads(*data)
    wrong = problems(off, on) + [f"off again: {e}" for e in problems(off, again)]
    # one reduction per column-parallel layer: c_attn and c_fc of each block, and the LM head
    if len(timings) != 2 * TINY.n_layer + 1 or timings[0]["what"] != "lm_head":
        wrong.append(f"reductions: {[t['what'] for t in timings]}")
    if any(t["overlapped"] != (P > 1) or not t["seconds"] >= 0 or not t["waited"] >= 0
           for t in timings):
        wrong.append(f"timings: {timings}")
    wrong += [] if all(COMM.allgather(not wrong)) else ["another rank differs"]
    assert not wrong, wrong


def test_deferred_weight_gradients_keep_their_bits(engine):
    model = GPT(TINY, PARAMS, COMM, algorithm="ring")
    name = "h.0.mlp.c_fc"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, TINY.n_embd)).astype(np.float32)
    dys = [rng.standard_normal(y.shape).astype(np.float32)
           for y in column_parallel(model.tp, model.shards, name, x)]
    plain = [{} for _ in model.shards]
    dx = column_parallel_backward(model.tp, model.shards, name, x, dys, plain)
    model.tp.engine = engine
    deferred = DeferredGrads(len(model.shards))
    dx_deferred = column_parallel_backward(model.tp, model.shards, name, x, dys, deferred)
    model.tp.engine = None
    assert deferred[0].keys() == {name + ".bias"}  # the weight's waits for finish()
    deferred.finish()
    assert np.array_equal(dx, dx_deferred)
    assert not problems((0, 0, plain), (0, 0, deferred))
