"""Each layer's backward against central differences of its forward, in float64, and causal
attention over a KV cache against attention over the whole sequence.

For a layer y = f(x) and a fixed random output gradient dy, backward must return the
gradient of L = sum(y * dy). A central difference (L(x + e) - L(x - e)) / 2e with
e = 1e-6 errs by O(e^2) from truncation and ~u L / e ~ 1e-10 from rounding, so 1e-6
relative plus 1e-9 absolute is a wide margin that still catches any wrong term.
"""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.models import attention, kv_cache, layers, linear
from mpipar.parallel.tensor_parallel import TPGroup

RNG = np.random.default_rng(0)


def numeric_gradient(f, x, dy, e=1e-6):
    """d sum(f(x) * dy) / dx by central differences, every coordinate."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += e
        minus[i] -= e
        grad[i] = (np.sum(f(plus) * dy) - np.sum(f(minus) * dy)) / (2 * e)
    return grad


def close(analytic, numeric):
    return np.all(np.abs(analytic - numeric) <= 1e-6 * np.abs(numeric) + 1e-9)


def test_layer_norm_backward():
    x, w, b, dy = RNG.standard_normal((2, 3, 5)), RNG.standard_normal(5), RNG.standard_normal(5), \
        RNG.standard_normal((2, 3, 5))
    dx, dw, db = layers.layer_norm_backward(x, w, dy, 1e-5)
    assert close(dx, numeric_gradient(lambda v: layers.layer_norm(v, w, b, 1e-5), x, dy))
    assert close(dw, numeric_gradient(lambda v: layers.layer_norm(x, v, b, 1e-5), w, dy))
    assert close(db, numeric_gradient(lambda v: layers.layer_norm(x, w, v, 1e-5), b, dy))


def test_gelu_and_softmax_backward():
    x, dy = RNG.standard_normal((3, 4)) * 3, RNG.standard_normal((3, 4))
    assert close(layers.gelu_backward(x, dy), numeric_gradient(layers.gelu, x, dy))
    assert close(attention.softmax_backward(attention.softmax(x), dy),
                 numeric_gradient(attention.softmax, x, dy))


def test_causal_attention_backward():
    q, k, v, dy = (RNG.standard_normal((1, 2, 4, 3)) for _ in range(4))
    _, probs = attention.causal_attention(q, k, v)
    grads = attention.causal_attention_backward(q, k, v, probs, dy)
    for which, got in enumerate(grads):
        def f(t, which=which):
            args = [q, k, v]
            args[which] = t
            return attention.causal_attention(*args)[0]
        assert close(got, numeric_gradient(f, [q, k, v][which], dy)), "qkv"[which]


def test_attention_over_a_kv_cache_is_attention_over_the_whole_sequence():
    q, k, v = (RNG.standard_normal((2, 3, 7, 4)) for _ in range(3))
    whole, _ = attention.causal_attention(q, k, v)
    cache = kv_cache.new_cache(1, 2, 7, [3], 4, np.float64)[0][0]
    for start, stop in [(0, 4), (4, 5), (5, 7)]:  # a prompt of 4, then one position at a time
        keys, values = kv_cache.extend(cache, k[:, :, start:stop], v[:, :, start:stop], start)
        part, _ = attention.causal_attention(q[:, :, start:stop], keys, values, pos0=start)
        np.testing.assert_allclose(part, whole[:, :, start:stop], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("ways", [1, 3])
def test_parallel_linear_layers_backward(ways):
    """Column-parallel then row-parallel (the MLP's shape without GELU): every shard's weight
    gradients and the input gradient, against differences of the whole two-layer forward."""
    tp = TPGroup(MPI.COMM_SELF, ways=ways)
    x, dy = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 3, 4))
    fc_w, fc_b, pr_w = RNG.standard_normal((4, 6)), RNG.standard_normal(6), RNG.standard_normal((6, 4))
    cols = np.array_split(np.arange(6), ways)
    shards = [{"fc.weight": fc_w[:, c], "fc.bias": fc_b[c], "proj.weight": pr_w[c],
               "proj.bias": np.zeros(4)} for c in cols]

    def forward(x, shards=shards):
        return linear.row_parallel(tp, shards, "proj", linear.column_parallel(tp, shards, "fc", x))

    grads = [{} for _ in shards]
    hidden = linear.column_parallel(tp, shards, "fc", x)
    dhidden = linear.row_parallel_backward(tp, shards, "proj", hidden, dy, grads)
    dx = linear.column_parallel_backward(tp, shards, "fc", x, dhidden, grads)
    assert close(dx, numeric_gradient(forward, x, dy))
    assert set(grads[0]) == {"fc.weight", "fc.bias", "proj.weight", "proj.bias"}
    assert all(set(g) == {"fc.weight", "fc.bias", "proj.weight"} for g in grads[1:])  # bias once
    for k, c in enumerate(cols):
        def with_fc(w, k=k):
            return forward(x, [dict(s, **{"fc.weight": w}) if j == k else s for j, s in enumerate(shards)])
        assert close(grads[k]["fc.weight"], numeric_gradient(with_fc, fc_w[:, c], dy))


def test_activations_of_a_scalar_equal_those_of_an_array():
    """The in-place activations take NumPy scalars too (the lessons call them on one number)."""
    from mpipar.models.layers import gelu, silu
    for f in (gelu, silu):
        for v in (np.float32(-1.0), np.float32(2.0), np.float64(0.5)):
            got = f(v)
            assert np.ndim(got) == 0 and got.dtype == v.dtype
            assert np.array_equal(got, f(np.array([v]))[0])
