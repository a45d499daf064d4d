"""ZeRO stages 1-3 train exactly what data parallelism trains, holding a block of the state.

Deterministic mode: ZeRO all-reduces each group with the naive algorithm (rank order, the
order of DataParallel's deterministic all-reduce), computes the norm's terms from whole
parameters as DP does, and AdamW is elementwise -- so losses, norms and parameters are
bitwise DP's. Default mode: the ring reduce-scatter adds each block's p terms in another
order, within gamma_{p-1} sum_r |g_r| of the exact sum (Higham 2002, eq. 4.4); the norm
is sqrt of float64 sums of the blocks' squares, so it is within the 2-norm of those
per-element bounds of the exact norm. The model is small; no group's size is a multiple
of 3 and some are not of 4: uneven blocks.
"""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.measure import numerics
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models.checkpoint import full_params
from mpipar.models.optim import AdamW
from mpipar.parallel.data_parallel import DataParallel, loss_weights
from mpipar.parallel.zero import Zero
from mpipar.parallel.zero_gather import gather_counts
from mpipar.parallel.zero_layout import ZeroLayout
from mpipar.parallel.zero_report import sent_by_op
from mpipar.tasks.addition import AdditionTask, batch_slice

WORLD = MPI.COMM_WORLD
TASK = AdditionTask(digits=2, seed=0, heldout=100)
CFG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, n_embd=14, n_head=2, n_layer=2)
BATCH = 10
STEPS = 3


def trainer(stage, deterministic, comm=WORLD, lr=3e-3, **kwargs):
    model = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)
    if stage == 0:
        return DataParallel(model, comm, AdamW(model, lr=lr), bucket_bytes=2048,
                            deterministic=deterministic)
    return Zero(model, comm, AdamW(model, lr=lr), stage=stage, deterministic=deterministic, **kwargs)


def train(t, steps=STEPS):
    """(losses, norms, the parameters after the steps, every step's ranks agreeing)."""
    losses, norms, agree = [], [], True
    for step in range(steps):
        out = t.step(TASK.batch(step, BATCH), TASK.loss_mask())
        losses.append(out["loss"])
        norms.append(out["grad_norm"])
        model = t.full_model() if isinstance(t, Zero) else t.model
        agree &= all(numerics.ranks_agree(WORLD, v) for _, v in sorted(full_params(model).items()))
    return losses, norms, full_params(model), agree


_DP = {}


def dp_run(deterministic):
    """DataParallel's run, once per mode (every test compares with it)."""
    if deterministic not in _DP:
        _DP[deterministic] = train(trainer(0, deterministic))
    return _DP[deterministic]


def test_groups_are_cut_unevenly_at_three_and_four_ranks():
    layout = ZeroLayout(GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF), 1)
    assert all(g.n % 3 for g in layout.groups) and any(g.n % 4 for g in layout.groups)


@pytest.mark.mpi
@pytest.mark.parametrize("stage, overlap", [(1, True), (2, True), (3, True), (3, False)])
def test_deterministic_zero_is_bitwise_deterministic_data_parallelism(stage, overlap):
    ref_losses, ref_norms, ref_params, _ = dp_run(True)
    losses, norms, params, agree = train(trainer(stage, True, overlap=overlap))
    assert agree
    assert losses == ref_losses and norms == ref_norms
    assert ref_norms[0] > 1.0  # clipping is active: the norm's bits matter
    assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params)


@pytest.mark.mpi
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_default_mode_gradient_blocks_and_norm_within_the_summation_bound(stage):
    p, rank = WORLD.Get_size(), WORLD.Get_rank()
    serial = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)
    tokens, mask = TASK.batch(0, BATCH), TASK.loss_mask()
    per_rank = []  # what each rank's slice contributes, computed here alone
    for r in range(p):
        local = batch_slice(tokens, r, p)
        w = loss_weights(mask, BATCH, len(local), serial.dtype)
        per_rank.append(serial.loss_and_grads(local[:, :-1], local[:, 1:], w)[2][0])
    t = trainer(stage, False)
    t.sum_gradients(tokens, mask)
    u = numerics.unit_roundoff(np.float32)
    gamma = (p - 1) * u / (1 - (p - 1) * u)
    exact_sq, bound_sq = 0.0, 0.0
    for gi, group in enumerate(t.layout.groups):
        flat = [np.concatenate([g[name].reshape(-1).astype(np.float64) for name in group.names])
                for g in per_rank]
        exact, scale = sum(flat), sum(np.abs(f) for f in flat)
        lo, hi = group.split[rank], group.split[rank + 1]
        assert t.grads[gi].shape == (hi - lo,)
        err = np.abs(t.grads[gi] - exact[lo:hi])
        assert np.all(err <= gamma * scale[lo:hi] * (1 + 1e-9) + 1e-30), group.names
        exact_sq += float(exact @ exact)
        bound_sq += float(np.sum((gamma * scale) ** 2))
    norm = t._norm()
    # |norm(g_hat) - norm(g)| <= norm(g_hat - g); the float64 sums of squares add ~1e-15
    assert abs(norm - np.sqrt(exact_sq)) <= np.sqrt(bound_sq) + 1e-12 * norm
    assert numerics.ranks_agree(WORLD, np.array([norm]))


@pytest.mark.mpi
@pytest.mark.parametrize("stage", [1, 3])  # 2 adds what 1 adds, during backward
def test_default_mode_training_tracks_data_parallelism(stage):
    ref_losses, _, ref_params, _ = dp_run(False)
    losses, _, params, agree = train(trainer(stage, False))
    assert agree
    # the block sums and the norm differ from DP's by the bounds above (the norm's float32
    # np.vdot in DP too); through 3 AdamW steps of lr = 3e-3 that stays far below the step
    assert np.allclose(losses, ref_losses, rtol=1e-5, atol=0)
    assert max(float(np.max(np.abs(params[k] - ref_params[k]))) for k in params) < 1e-5


@pytest.mark.mpi
def test_overlap_changes_no_bit():
    """The non-blocking ring reduce-scatter adds what the blocking one adds, in its order;
    prefetching a gather only moves it earlier (stage 3 does both)."""
    losses, norms, params, _ = train(trainer(3, False, overlap=True), steps=2)
    ref_losses, ref_norms, ref_params, _ = train(trainer(3, False, overlap=False), steps=2)
    assert losses == ref_losses and norms == ref_norms
    assert all(np.array_equal(params[k], ref_params[k]) for k in ref_params)


def one_step_bytes(t):
    with CommLedger() as led:
        t.step(TASK.batch(0, BATCH), TASK.loss_mask())
    return sent_by_op(led)


@pytest.mark.mpi
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("deterministic", [False, True])
def test_ledger_bytes_per_step_are_the_formula(stage, deterministic):
    t = trainer(stage, deterministic)
    sent, predicted = one_step_bytes(t), t.predicted_bytes()
    assert {k: v for k, v in sent.items() if v} == {k: v for k, v in predicted.items() if v}


@pytest.mark.mpi
def test_stages_one_and_two_send_what_dp_sends_and_stage_three_its_gathers_more():
    p, psi = WORLD.Get_size(), ZeroLayout(trainer(1, False).model, 1).numel

    def total(sent, ops=("reduce_scatter", "allgather")):
        return WORLD.allreduce(sum(sent.get(op, 0) for op in ops))

    dp = trainer(0, False)
    with CommLedger() as led:
        dp.step(TASK.batch(0, BATCH), TASK.loss_mask())
    dp_bytes = WORLD.allreduce(sum(r["bytes_sent"] for r in led.to_dict()["records"]
                                   if r["count"] > 1))  # the buckets, not the loss scalar
    ring = 2 * (p - 1) * 4 * psi  # over all ranks: every block but one, twice
    assert dp_bytes == ring
    assert total(one_step_bytes(trainer(1, False))) == ring
    assert total(one_step_bytes(trainer(2, False))) == ring
    t3 = trainer(3, False)
    counts = gather_counts(t3.gather.uses, len(t3.layout.groups))
    expected = (p - 1) * 4 * sum((1 + counts[gi]) * g.n for gi, g in enumerate(t3.layout.groups))
    assert total(one_step_bytes(t3)) == expected
    assert p == 1 or 1.5 * ring < expected < 2 * ring  # the tied embedding is gathered 3 times


@pytest.mark.mpi
def test_stage_three_holds_only_its_block_between_steps():
    t = trainer(3, False)
    t.step(TASK.batch(0, BATCH), TASK.loss_mask())
    assert not any(name in t.model.shards[0] for name in t.layout.group_of)
    mem = t.memory()
    own = 4 * t.layout.owned(WORLD.Get_rank())
    assert mem["held"]["params"] == mem["predicted"]["params"] == own
    assert mem["held"]["optimizer"] == mem["predicted"]["optimizer"] == 2 * own
    assert 0 < mem["held"]["gathered_peak"] <= 4 * t.layout.numel


def test_bad_stage_and_tensor_parallel_models_are_refused():
    model = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)
    with pytest.raises(ValueError, match="--zero must be one of 0, 1, 2, 3"):
        Zero(model, MPI.COMM_SELF, AdamW(model), stage=4)
    split = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF, ways=2)
    with pytest.raises(ValueError, match="does not combine with --tp 2"):
        Zero(split, MPI.COMM_SELF, AdamW(split), stage=1)
