"""Data parallelism with gradient accumulation over micro-batches (mpipar.parallel.dp_micro).

Every rank computes each micro-batch's gradient exactly as one process computes that
micro-batch (same shapes, same bits), so the reference below is one process computing
g[r][m], the gradient of rank r's micro-batch m, and g[r], that of rank r's whole shard.
Summing p M terms in any order is within gamma_{pM-1} sum |terms| of their exact sum,
gamma_k = k u / (1 - k u) (Higham 2002, eq. 4.4): that bounds the micro-batch results
against the exact sum of the g[r][m], and the whole batch's (p terms) against that of the
g[r]. The two exact sums differ by what cutting the shard changes inside one process (the
rows summed by another matrix product), which the reference measures in float64; the
triangle inequality adds the three.
"""
from helpers import NoMessages, all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives.progress import thread_level_problem
from mpipar.measure import numerics
from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models.checkpoint import full_params
from mpipar.models.optim import AdamW
from mpipar.parallel.data_parallel import DataParallel, loss_weights
from mpipar.parallel.dp_micro import micro_step
from mpipar.tasks.addition import AdditionTask, batch_slice

WORLD = MPI.COMM_WORLD
P, RANK = WORLD.Get_size(), WORLD.Get_rank()
TASK = AdditionTask(digits=2, seed=0, heldout=100)
CFG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, n_embd=16, n_head=2, n_layer=2)
BATCH, M = 13, 3  # shards of 13 // p or one more, micro-batches of uneven sizes at every p
MODES = ("none", "poll", "thread") if thread_level_problem() is None else ("none", "poll")


def model():
    return GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)


@pytest.mark.mpi
@pytest.mark.parametrize("sync", ["each", "last"])
def test_overlap_modes_and_rings_in_flight_train_to_identical_parameters(sync):
    """none / poll / thread (one ring at a time and several) on the same batches: the same
    rings and the same additions in the same order, so the same bits after every step."""
    trainers = {}
    for mode in MODES:
        for in_flight in ((1, 3) if mode != "none" else (None,)):
            net = model()
            trainers[mode, in_flight] = DataParallel(
                net, WORLD, AdamW(net, lr=3e-3), bucket_bytes=512, overlap=mode,
                in_flight=in_flight, micro_batches=M, sync=sync)
    problems = []
    for step in range(2):
        out = {key: t.step(TASK.batch(step, BATCH), TASK.loss_mask()) for key, t in trainers.items()}
        params = {key: full_params(t.model) for key, t in trainers.items()}
        base = ("none", None)
        for key in trainers:
            if out[key]["loss"] != out[base]["loss"]:
                problems.append(f"step {step} {key}: loss {out[key]['loss']} != {out[base]['loss']}")
            problems += [f"step {step} {key}: {name} differs" for name in params[base]
                         if not np.array_equal(params[key][name], params[base][name])]
            if not numerics.ranks_agree(WORLD, params[key]["wte.weight"]):
                problems.append(f"step {step} {key}: the replicas disagree")
    for t in trainers.values():
        t.close()
    all_ranks_ok(problems)


def reference(tokens, mask):
    """One process: per rank r, the losses and gradients of its M micro-batches and of its
    whole shard, as rank r computes them."""
    net, micro, whole = model(), [], []
    for r in range(P):
        local = batch_slice(tokens, r, P)
        parts = np.array_split(local, M)
        micro.append([net.loss_and_grads(x[:, :-1], x[:, 1:], loss_weights(
            mask, len(tokens), len(x), net.dtype))[::2] for x in parts])
        whole.append(net.loss_and_grads(local[:, :-1], local[:, 1:], loss_weights(
            mask, len(tokens), len(local), net.dtype))[::2])
    return micro, whole


def gamma(n, dtype):
    u = numerics.unit_roundoff(dtype)
    return max(n, 0) * u / (1 - max(n, 0) * u)


@pytest.mark.mpi
@pytest.mark.parametrize("sync", ["each", "last"])
def test_micro_batch_gradient_and_loss_within_the_bound_of_the_whole_batch(sync):
    tokens, mask = TASK.batch(0, BATCH), TASK.loss_mask()
    micro, whole = reference(tokens, mask)
    local = batch_slice(tokens, RANK, P)
    parts = np.array_split(local, M)
    runs = {}
    for name, cuts, m in (("micro", parts, M), ("whole", [local], 1)):
        net = model()
        trainer = DataParallel(net, WORLD, AdamW(net, lr=0.0), bucket_bytes=512, overlap="poll",
                               micro_batches=m, sync=sync)
        loss, grads, _ = micro_step(trainer, cuts, [loss_weights(mask, BATCH, len(x), net.dtype)
                                                    for x in cuts])  # what step() sums
        runs[name] = WORLD.allreduce(float(loss)), grads[0]
        trainer.close()
    (got_loss, got), (whole_loss, whole_grads) = runs["micro"], runs["whole"]
    problems = []
    for name, g in got.items():
        terms = [gm[name].astype(np.float64) for per_rank in micro for _, (gm,) in per_rank]
        shards = [gr[0][name].astype(np.float64) for _, gr in whole]
        exact_micro, exact_whole = sum(terms), sum(shards)
        bound_micro = gamma(P * M - 1, np.float32) * sum(np.abs(t) for t in terms)
        if not np.all(np.abs(g - exact_micro) <= bound_micro * (1 + 1e-9) + 1e-30):
            problems.append(f"{name}: off the exact sum of its micro-batch terms")
        # |micro - whole| <= |micro - exact_micro| + |exact_micro - exact_whole| + |exact_whole - whole|
        bound = (bound_micro + gamma(P - 1, np.float32) * sum(np.abs(s) for s in shards)
                 + np.abs(exact_micro - exact_whole)) * (1 + 1e-9) + 1e-30
        if not np.all(np.abs(g - whole_grads[name]) <= bound):
            problems.append(f"{name}: off the whole batch's gradient by more than the bound")
    losses_micro = [float(lm) for per_rank in micro for lm, _ in per_rank]
    losses_whole = [float(lw) for lw, _ in whole]
    loss_bound = (abs(sum(losses_micro) - sum(losses_whole))
                  + gamma(P * M, np.float64) * sum(map(abs, losses_micro))
                  + gamma(P, np.float64) * sum(map(abs, losses_whole))) * (1 + 1e-9)
    if not abs(got_loss - whole_loss) <= loss_bound + 1e-300:
        problems.append(f"loss {got_loss} vs whole batch {whole_loss}, bound {loss_bound}")
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_too_few_examples_for_the_micro_batches_is_one_error_before_any_message():
    net = model()
    trainer = DataParallel(net, WORLD, AdamW(net, lr=3e-3), bucket_bytes=512, micro_batches=4)
    real, trainer.comm = trainer.comm, NoMessages(WORLD)  # a message would fail the test
    try:
        trainer.step(TASK.batch(0, 4 * P - 1), TASK.loss_mask())
        message = None
    except ValueError as e:
        message = str(e)
    trainer.comm = real
    messages = WORLD.allgather(message)
    assert message is not None and "micro_batches=4 exceeds the 3 examples" in message
    assert all(m == messages[0] for m in messages)
    assert np.isfinite(trainer.step(TASK.batch(0, 4 * P), TASK.loss_mask())["loss"])
    for bad in (dict(micro_batches=0), dict(sync="sometimes"), dict(micro_batches=2.5)):
        with pytest.raises(ValueError, match="DataParallel: (micro_batches|sync)"):
            DataParallel(net, WORLD, AdamW(net, lr=3e-3), **bad)
