"""A pipeline's three overlap modes -- poll (the default), none, and thread (its messages on a
communication thread, ``pipeline_engine``) -- send the same messages and compute the same
things, so after every step their losses, gradients and parameters have the same bits; and the
ledger counts every byte once whichever thread completed the message.

Each test gathers every rank's problems and asserts on the whole list, so all ranks pass or
fail together. At p = 1 there are no messages: the modes must still agree.
"""
from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives.progress import ProgressEngine, thread_level_problem
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPTConfig, init_params
from mpipar.parallel.mesh import Mesh
from mpipar.parallel.pipeline_train import PipelineTraining
from mpipar.parallel.schedules import make_schedule
from mpipar.tasks.addition import AdditionTask

WORLD = MPI.COMM_WORLD
P = WORLD.Get_size()
TASK = AdditionTask(digits=2, seed=0, heldout=100)
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(thread_level_problem() is not None,
                                                  reason="this MPI has no MPI_THREAD_MULTIPLE")]


def config(n_layer):
    return GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, n_embd=16, n_head=2,
                     n_layer=n_layer)


def train(mode, name, m, v=1, tp=1, steps=2, engine=None):
    """Per step: (loss, grad norm, every chunk's gradients); then the full parameters and the
    last step's point-to-point ledger records."""
    cfg = config(P // tp * v + 1)  # uneven stages
    with Mesh(WORLD, 1, tp, pp=P // tp) as mesh, PipelineTraining(
            cfg, init_params(cfg, 0), mesh, make_schedule(name, P // tp, m, v), overlap=mode,
            engine=engine, optimizer=dict(lr=3e-3), algorithm="ring") as training:
        figures = []
        for step in range(steps):
            with CommLedger() as led:
                out = training.step(TASK.batch(step, 10), TASK.loss_mask())
            grads = [{k: g.copy() for shard in c.grads for k, g in shard.items()}
                     for c in training.chunks]
            figures.append((out["loss"], out["grad_norm"], grads))
        records = [r for r in led.records if r["op"] in ("send", "recv")]
        return figures, training.full_params(everywhere=True), records


def differences(got, want):
    (steps, params, _), (ref_steps, ref_params, _) = got, want
    problems = []
    for k, ((loss, norm, grads), (rl, rn, rg)) in enumerate(zip(steps, ref_steps)):
        if (loss, norm) != (rl, rn):
            problems.append(f"step {k}: loss {loss} norm {norm}, want {rl} {rn}")
        for c, (g, r) in enumerate(zip(grads, rg)):
            problems += [f"step {k} chunk {c}: gradient {n}" for n in r
                         if not np.array_equal(g.get(n), r[n])]
    problems += [f"parameter {n}" for n in ref_params if not np.array_equal(params[n], ref_params[n])]
    return problems


CASES = [("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("interleaved", 2)]


@pytest.mark.parametrize("name, v", CASES)
def test_thread_none_and_poll_are_bitwise_equal_after_every_step(name, v):
    m = P if name == "interleaved" and P > 2 else 4
    poll = train("poll", name, m, v)
    problems = [f"thread: {p}" for p in differences(train("thread", name, m, v), poll)]
    problems += [f"none: {p}" for p in differences(train("none", name, m, v), poll)]
    all_ranks_ok(problems)


def test_the_ledger_counts_every_byte_once_with_the_main_threads_seconds():
    """The same messages in both modes; the sends' bytes summed over ranks equal the
    receives'; a record's seconds (the main thread's blocked time) is a time."""
    cfg_steps = {mode: train(mode, "1f1b", 4, steps=1) for mode in ("poll", "thread")}
    problems = []
    mine = {}
    for mode, (_, _, records) in cfg_steps.items():
        mine[mode] = sorted((r["op"], r["peer"], r["tag"], r["nbytes"]) for r in records)
        sent = WORLD.allreduce(sum(r["bytes_sent"] for r in records))
        received = WORLD.allreduce(sum(r["bytes_received"] for r in records))
        if sent != received or (P > 1) != (sent > 0):
            problems.append(f"{mode}: {sent} bytes sent, {received} received")
        problems += [f"{mode}: seconds {r['seconds']}, in flight {r['in_flight_seconds']}"
                     for r in records if not (0 <= r["seconds"] < 60 and 0 <= r["in_flight_seconds"] < 60)]
    if mine["poll"] != mine["thread"]:
        problems.append(f"thread mode's messages {mine['thread']} differ from poll's {mine['poll']}")
    all_ranks_ok(problems)


@pytest.mark.skipif(P != 4, reason="pp = 2 x tp = 2 needs 4 ranks")
def test_thread_beside_tensor_parallel_all_reduces_on_a_shared_engine():
    """The main thread all-reduces over tp while the loop waits on pp messages; one engine
    serves two pipelines in turn."""
    with ProgressEngine() as engine:
        thread = train("thread", "1f1b", 4, tp=2, engine=engine)
        again = train("thread", "interleaved", 2, v=2, tp=2, engine=engine)
    problems = differences(thread, train("poll", "1f1b", 4, tp=2))
    problems += differences(again, train("poll", "interleaved", 2, v=2, tp=2))
    all_ranks_ok(problems)
