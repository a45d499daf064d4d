"""Data-parallel training equals one process training on the same global batch.

Each rank computes the gradients of its shard exactly as one process computes
that micro-batch (same shapes, same bits); only the order in which the shards'
gradients are added differs. Deterministic mode adds them in rank order, like
gradient accumulation on one process (``accumulated_grads``): bitwise equal.
The default mode adds them in ring order: any order of adding p terms is within
gamma_{p-1} sum_r |g_r| of the exact sum, gamma_k = k u / (1 - k u) (Higham 2002,
eq. 4.4).
"""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.measure import numerics
from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models.checkpoint import full_params
from mpipar.models.optim import AdamW
from mpipar.parallel.data_parallel import DataParallel, accumulated_grads, loss_weights
from mpipar.parallel.dp_micro import bucket_hook
from mpipar.parallel.mesh import Mesh
from mpipar.tasks.addition import AdditionTask, batch_slice

WORLD = MPI.COMM_WORLD
TASK = AdditionTask(digits=2, seed=0, heldout=100)
CFG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, n_embd=16, n_head=2, n_layer=1)
BATCH = 10  # not divisible by 3 or 4: uneven shards


def serial_run(steps, dp, lr=3e-3):
    """One process: accumulate the dp shards' gradients in order, then the same update."""
    model = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)
    opt = AdamW(model, lr=lr)
    from mpipar.models.optim import clip_grad_norm
    losses = []
    for step in range(steps):
        loss, grads = accumulated_grads(model, TASK.batch(step, BATCH), TASK.loss_mask(), dp)
        clip_grad_norm(model.tp, grads, 1.0)
        opt.step(grads)
        losses.append(loss)
    return losses, full_params(model)


def parallel_run(steps, comm, deterministic, overlap=True, tp=1, lr=3e-3):
    with Mesh.build(comm, tp=tp) as mesh:
        model = GPT(CFG, init_params(CFG, 0), mesh.tp_comm, algorithm="ring")
        trainer = DataParallel(model, mesh.dp_comm, AdamW(model, lr=lr), bucket_bytes=2048,
                               overlap=overlap, deterministic=deterministic)
        losses, agree = [], True
        for step in range(steps):
            losses.append(trainer.step(TASK.batch(step, BATCH), TASK.loss_mask())["loss"])
            params = full_params(model)
            agree &= all(numerics.ranks_agree(comm, v) for _, v in sorted(params.items()))
        return losses, params, agree, mesh.dp


@pytest.mark.mpi
def test_deterministic_data_parallel_is_bitwise_serial_accumulation():
    losses, params, agree, dp = parallel_run(3, WORLD, deterministic=True)
    ref_losses, ref_params = serial_run(3, dp)
    assert agree  # every rank holds identical parameters after every step
    assert losses == ref_losses
    assert all(np.array_equal(params[k], ref_params[k]) for k in params)


@pytest.mark.mpi
@pytest.mark.parametrize("overlap", [True, False])
def test_default_mode_gradients_within_the_summation_bound(overlap):
    p = WORLD.Get_size()
    model = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)
    tokens, mask = TASK.batch(0, BATCH), TASK.loss_mask()
    per_shard = []
    for r in range(p):  # what each rank computes: the reference's micro-batches
        local = batch_slice(tokens, r, p)
        w = loss_weights(mask, BATCH, len(local), model.dtype)
        per_shard.append(model.loss_and_grads(local[:, :-1], local[:, 1:], w)[2][0])
    trainer = DataParallel(GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF), WORLD,
                           AdamW(model, lr=0.0), bucket_bytes=2048, overlap=overlap)
    local = batch_slice(tokens, WORLD.Get_rank(), p)
    w = loss_weights(mask, BATCH, len(local), model.dtype)
    # run the same synchronisation the trainer runs, on the trainer's own buckets
    hook = bucket_hook(trainer.buckets) if trainer.buckets else None
    _, _, grads = trainer.model.loss_and_grads(local[:, :-1], local[:, 1:], w, on_layer_done=hook)
    summed = trainer.buckets.finish(average=False) if trainer.buckets else \
        {f"0:{k}": v for k, v in grads[0].items()}
    u = numerics.unit_roundoff(np.float32)
    worst = 0.0
    for key, g in summed.items():
        name = key.split(":", 1)[1]
        exact = sum(s[name].astype(np.float64) for s in per_shard)
        scale = sum(np.abs(s[name].astype(np.float64)) for s in per_shard)
        err = np.abs(g - exact)
        gamma = (p - 1) * u / (1 - (p - 1) * u)
        assert np.all(err <= gamma * scale * (1 + 1e-9) + 1e-30), name
        worst = max(worst, float(np.max(err / (u * scale + 1e-30))))
    assert worst <= max(p - 1, 0) * (1 + 1e-6)


@pytest.mark.mpi
def test_default_mode_training_tracks_serial_and_ranks_agree():
    losses, params, agree, dp = parallel_run(4, WORLD, deterministic=False)
    ref_losses, ref_params = serial_run(4, dp)
    assert agree
    # rounding differences of the gradient sums pass through AdamW's division by
    # sqrt(v); after a few steps they stay far below the step size lr = 3e-3
    assert np.allclose(losses, ref_losses, rtol=1e-5, atol=0)
    assert max(float(np.max(np.abs(params[k] - ref_params[k]))) for k in params) < 1e-5


@pytest.mark.mpi(min_size=4)
def test_two_by_two_mesh_deterministic_equals_serial():
    comm = WORLD.Split(0 if WORLD.Get_rank() < 4 else MPI.UNDEFINED, WORLD.Get_rank())
    if comm == MPI.COMM_NULL:
        return
    try:
        losses, params, agree, dp = parallel_run(3, comm, deterministic=True, tp=2)
    finally:
        comm.Free()
    assert dp == 2 and agree
    ref_losses, ref_params = serial_run(3, 2)
    # tensor parallelism adds the heads' partial sums in another order (ring
    # all-reduce over tp): close to serial, not bitwise
    assert np.allclose(losses, ref_losses, rtol=1e-5)
    assert max(float(np.max(np.abs(params[k] - ref_params[k]))) for k in params) < 1e-5
