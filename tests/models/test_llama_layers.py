"""Llama's layers against their formulas: RMSNorm, the rotary embedding (explicit values, norms
kept, scores that see only relative positions, the complex-number form), SiLU, and Megatron's
linear layers without a bias."""
from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref

from mpipar.measure import numerics
from mpipar.models import layers, linear, rotary
from mpipar.parallel.tensor_parallel import TPGroup

RNG = np.random.default_rng(0)


def test_rms_norm_by_hand_and_by_formula():
    # x = [3, 4]: mean square 12.5, so x / sqrt(12.5) = [0.8485, 1.1314]; times gains [1, 2]
    got = layers.rms_norm(np.array([3.0, 4.0]), np.array([1.0, 2.0]), 0.0)
    np.testing.assert_allclose(got, [3 / np.sqrt(12.5), 8 / np.sqrt(12.5)], rtol=1e-15)
    x, w = RNG.standard_normal((2, 3, 7)), RNG.standard_normal(7)
    rms = np.sqrt(np.array([[sum(v * v for v in row) / 7 for row in b] for b in x]) + 1e-5)
    np.testing.assert_allclose(layers.rms_norm(x, w, 1e-5), x / rms[..., None] * w, rtol=1e-14)
    # no centring: a constant row is not sent to zero, and the scale of x drops out (eps = 0)
    assert np.allclose(layers.rms_norm(np.full(4, -2.0), np.ones(4), 0.0), -1.0)
    np.testing.assert_allclose(layers.rms_norm(5 * x, w, 0.0), layers.rms_norm(x, w, 0.0), rtol=1e-14)


def test_rotary_frequencies_and_values_by_hand():
    # head_dim 4, theta 100: f = [100^0, 100^(-1/2)] = [1, 0.1]; pairs (x0, x2) and (x1, x3)
    np.testing.assert_allclose(rotary.frequencies(4, 100.0), [1.0, 0.1], rtol=1e-15)
    cos, sin = rotary.tables(4, 100.0, 0, 3, np.float64)
    m = 2  # position 2: pair 0 turned by 2 radians, pair 1 by 0.2
    eye = np.eye(4)[:, None, :]  # the 4 unit vectors, each at the 3 positions
    turned = rotary.apply(eye, cos, sin)[:, m]
    c0, s0, c1, s1 = np.cos(2), np.sin(2), np.cos(0.2), np.sin(0.2)
    expected = [[c0, 0, s0, 0], [0, c1, 0, s1], [-s0, 0, c0, 0], [0, -s1, 0, c1]]
    np.testing.assert_allclose(turned, expected, rtol=0, atol=1e-15)
    assert np.array_equal(rotary.apply(eye, cos, sin)[:, 0], eye[:, 0])  # position 0: no turn


def test_rotary_tables_of_later_positions_are_the_rows_of_longer_ones():
    """What the KV cache relies on: positions pos0.. computed alone get the same bits."""
    whole = rotary.tables(64, 1e5, 0, 40, np.float32)
    for part, rows in zip(rotary.tables(64, 1e5, 33, 7, np.float32), whole):
        assert numerics.bitwise_equal(part, rows[33:40])


def test_rotary_turns_pairs_keeps_their_length_and_is_the_complex_product():
    x, hd = RNG.standard_normal((3, 10, 16)), 16
    cos, sin = rotary.tables(hd, 500.0, 4, 10, np.float64)
    y = rotary.apply(x, cos, sin)
    pair_norm = np.hypot(x[..., :hd // 2], x[..., hd // 2:])
    np.testing.assert_allclose(np.hypot(y[..., :hd // 2], y[..., hd // 2:]), pair_norm, rtol=1e-14)
    for b in range(3):  # the oracle's (x_i + i x_{i+hd/2}) exp(i m f_i), positions 4..13
        np.testing.assert_allclose(y[b], ref.rotate(x[b], np.arange(4, 14), 500.0), rtol=0, atol=1e-14)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] over the last axis, as the formula writes it."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def test_rotary_half_by_half_is_the_formula_bit_for_bit():
    """apply's half-by-half form gives the bits of x cos + rotate_half(x) sin, on a strided view
    (the heads of a (B, T, heads, d_h) projection) as on a contiguous array."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    cos, sin = rotary.tables(8, 10000.0, 2, 5, np.float32)
    for a in (x, np.ascontiguousarray(x)):
        assert np.array_equal(rotary.apply(a, cos, sin), a * cos + rotate_half(a) * sin)


def test_rotary_scores_depend_only_on_the_distance():
    q, k, hd = RNG.standard_normal(32), RNG.standard_normal(32), 32

    def score(m, n):
        cos, sin = rotary.tables(hd, 10000.0, 0, 60, np.float64)
        return rotary.apply(q, cos[m], sin[m]) @ rotary.apply(k, cos[n], sin[n])

    for m, n in [(5, 2), (9, 9), (3, 7)]:
        for shift in (1, 17, 40):
            assert abs(score(m + shift, n + shift) - score(m, n)) <= 1e-12 * np.abs(q) @ np.abs(k)
    assert abs(score(5, 2) - score(6, 2)) > 1e-3  # ... and it does depend on the distance


def test_silu():
    x = np.array([-100.0, -3.0, 0.0, 0.5, 40.0], np.float32)
    with np.errstate(all="raise"):  # no overflow warning where exp(100) is inf in float32
        y = layers.silu(x)
    exact = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))  # -3.7e-42 for x = -100
    assert y.dtype == np.float32 and np.allclose(y, exact, rtol=1e-6, atol=1e-40)
    assert y[0] == 0 and y[4] == 40.0


@pytest.mark.parametrize("ways", [1, 3])
def test_linear_layers_without_a_bias_are_x_w(ways):
    tp = TPGroup(MPI.COMM_SELF, ways=ways)
    x, w1, w2 = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((4, 6)), RNG.standard_normal((6, 5))
    cols = np.array_split(np.arange(6), ways)
    shards = [{"up.weight": w1[:, c], "down.weight": w2[c]} for c in cols]
    parts = linear.column_parallel(tp, shards, "up", x)
    for part, c in zip(parts, cols):
        assert numerics.bitwise_equal(part, x @ w1[:, c])
    np.testing.assert_allclose(linear.row_parallel(tp, shards, "down", parts), x @ w1 @ w2, rtol=1e-12)
