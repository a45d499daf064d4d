"""GPT.loss_and_grads, the hand-written backward pass, against finite differences in float64;
the order it reports gradients in; AdamW and the global gradient norm.

A central difference (L(p + e) - L(p - e)) / 2e errs by O(e^2 |L'''|) from
truncation and by about n u L / e from rounding, n ~ 1e3 operations in the loss:
with e = 1e-5 that is ~1e-10 relative plus ~1e-8 absolute. So agreement to 1e-5
relative plus 1e-8 absolute leaves a wide margin while still catching any wrong
term (those are O(1) relative).
"""
import zlib

from mpi4py import MPI
import numpy as np
import pytest

from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models.optim import AdamW, global_grad_norm
from mpipar.models.params import is_sharded, shard_params
from mpipar.parallel.data_parallel import ready_order

CFG = GPTConfig(vocab_size=23, n_ctx=8, n_embd=12, n_head=3, n_layer=2, dtype="float64")
RNG = np.random.default_rng(0)
PARAMS = {k: v + RNG.normal(0, 0.1, v.shape) for k, v in init_params(CFG, 1).items()}
TOKENS = RNG.integers(0, CFG.vocab_size, (2, 7))
WEIGHTS = RNG.random((2, 6))


def loss_of(params, ways=None):
    model = GPT(CFG, params, MPI.COMM_SELF, ways=ways)
    return model.loss_and_grads(TOKENS[:, :-1], TOKENS[:, 1:], WEIGHTS)


def analytic(grads, name, index, ways):
    """d loss / d params[name][index] from the shards' gradients."""
    if not is_sharded(name):
        return grads[0][name][index]
    marker = {k: np.zeros_like(v) for k, v in PARAMS.items()}
    marker[name][index] = 1.0
    return sum(float((shard_params(CFG, marker, r, ways)[name] * grads[r][name]).sum())
               for r in range(ways))


@pytest.mark.parametrize("ways", [1, 3])
@pytest.mark.parametrize("layer", ["wte", "wpe", "h.0.", "h.1.", "ln_f"])
def test_gradients_match_finite_differences(ways, layer):
    _, _, grads = loss_of(PARAMS, ways)
    rng = np.random.default_rng(zlib.crc32(layer.encode()))  # the same coordinates every run
    names = [n for n in PARAMS if n.startswith(layer)]
    for name in names:
        for _ in range(3):
            index = tuple(int(rng.integers(0, s)) for s in PARAMS[name].shape)
            plus = {k: v.copy() for k, v in PARAMS.items()}
            minus = {k: v.copy() for k, v in PARAMS.items()}
            plus[name][index] += 1e-5
            minus[name][index] -= 1e-5
            numeric = (loss_of(plus, ways)[0] - loss_of(minus, ways)[0]) / 2e-5
            got = analytic(grads, name, index, ways)
            assert abs(got - numeric) <= 1e-5 * (abs(numeric) + abs(got)) + 1e-8, (name, index)


def test_split_changes_nothing_but_rounding():
    loss1, _, g1 = loss_of(PARAMS, 1)
    loss3, _, g3 = loss_of(PARAMS, 3)
    assert abs(loss1 - loss3) <= 1e-12 * abs(loss1)
    assert abs(global_grad_norm(GPT(CFG, PARAMS, MPI.COMM_SELF).tp, g1)
               - global_grad_norm(GPT(CFG, PARAMS, MPI.COMM_SELF, ways=3).tp, g3)) < 1e-10


def test_adamw_first_step_moves_each_weight_by_lr():
    # after one step m/(1-b1) = g and v/(1-b2) = g^2, so the step is lr * g / (|g| + eps)
    model = GPT(CFG, PARAMS, MPI.COMM_SELF)
    _, _, grads = model.loss_and_grads(TOKENS[:, :-1], TOKENS[:, 1:], WEIGHTS)
    before = model.shards[0]["h.0.mlp.c_fc.bias"].copy()
    g = grads[0]["h.0.mlp.c_fc.bias"].copy()
    AdamW(model, lr=0.01, weight_decay=0.0).step(grads)
    step = before - model.shards[0]["h.0.mlp.c_fc.bias"]
    assert np.allclose(step, 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("ways", [1, 3])
def test_gradients_are_reported_in_grad_order_once_final(ways):
    """Data parallelism buckets gradients in ``grad_order()``: backward must report exactly
    those groups, in that order, each gradient final (never written again) when reported."""
    model = GPT(CFG, PARAMS, MPI.COMM_SELF, ways=ways)
    reported = []

    def on_layer_done(names, grads):
        reported.append((list(names), {(k, n): g[n].copy() for n in names for k, g in enumerate(grads)
                                       if n in g}))

    _, _, grads = model.loss_and_grads(TOKENS[:, :-1], TOKENS[:, 1:], WEIGHTS, on_layer_done)
    assert [names for names, _ in reported] == model.grad_order()
    assert sorted(n for names, _ in reported for n in names) == sorted(PARAMS)
    for _, copies in reported:
        assert all(np.array_equal(grads[k][n], g) for (k, n), g in copies.items())
    # every shard has its piece of each sharded gradient, replicated ones only shard 0
    assert [key for key, _ in ready_order(model)] == [
        f"{k}:{n}" for names in model.grad_order() for n in names for k in range(ways)
        if k == 0 or is_sharded(n)]
    assert all(set(g) == {n for n in PARAMS if is_sharded(n)} for g in grads[1:])
