"""The fits of mpipar.measure.fit recover known constants from synthetic timings (no MPI)."""
import numpy as np
import pytest

from mpipar.measure import fit

SIZES = [8, 1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22]
ALPHA, BETA, OVERHEAD, GAMMA = 4e-6, 3e-10, 2.5e-6, 4e-11


def synthetic(trials=5, noise=0.0, seed=0):
    """raw[k][i] = alpha + n beta, step[k][i] = raw + o + n gamma, times (1 + noise)."""
    rng = np.random.default_rng(seed)
    n = np.array(SIZES, float)
    raw = [(ALPHA + n * BETA) * (1 + noise * rng.standard_normal(n.size)) for _ in range(trials)]
    step = [(ALPHA + OVERHEAD + n * (BETA + GAMMA)) * (1 + noise * rng.standard_normal(n.size))
            for _ in range(trials)]
    return raw, step


def test_the_line_is_recovered_exactly():
    n = np.array(SIZES, float)
    assert fit.fit_line(SIZES, ALPHA + n * BETA) == pytest.approx((ALPHA, BETA), rel=1e-9)


def test_alpha_beta_and_o_are_recovered_from_exchange_and_step_timings():
    raw, step = synthetic()
    got = fit.fit_model(SIZES, raw, step)
    assert got == pytest.approx({"alpha": ALPHA, "beta": BETA, "o": OVERHEAD}, rel=1e-9)
    o, per_byte = fit.fit_overhead(SIZES, raw[0], step[0])
    assert (o, per_byte) == pytest.approx((OVERHEAD, GAMMA), rel=1e-9)


def test_without_steps_o_is_zero():
    raw, _ = synthetic()
    assert fit.fit_model(SIZES, raw)["o"] == 0.0


def test_noisy_trials_give_a_spread_around_the_truth():
    raw, step = synthetic(trials=9, noise=0.03)
    spread = fit.spread(fit.fits_per_trial(SIZES, raw, step))
    for key, truth in (("alpha", ALPHA), ("beta", BETA), ("o", OVERHEAD)):
        median, lo, hi = spread[key]
        assert lo <= median <= hi and lo < hi
        assert median == pytest.approx(truth, rel=0.25), key
    assert fit.fit_model(SIZES, raw, step)["beta"] == pytest.approx(BETA, rel=0.05)


def test_a_fit_below_zero_is_floored_to_a_small_positive_constant():
    n = np.array(SIZES, float)
    raw = [1e-6 + n * 1e-10]
    step = [0.5e-6 + n * 1e-10]  # a "step" faster than the bare exchange: noise
    got = fit.fit_model(SIZES, raw, step)
    assert got["o"] == 0.0 and got["alpha"] > 0 and got["beta"] > 0


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        fit.fit_line([8, 8], [1e-6, 1e-6])
    with pytest.raises(ValueError, match="positive"):
        fit.fit_line([8, 16], [1e-6, 0.0])


def test_a_break_in_the_per_byte_cost_is_found_where_it_is():
    sizes = [8, 1024, 16384, 65536, 262144, 1 << 20, 1 << 22, 1 << 24]
    n = np.array(sizes, float)
    bent = np.where(n < (1 << 20), ALPHA + n * BETA, ALPHA + n * 2.2 * BETA)  # past "the caches"
    assert fit.find_break(sizes, bent) == 5
    assert fit.slope_through(sizes[5:], bent[5:], ALPHA) == pytest.approx(2.2 * BETA)
    assert fit.find_break(sizes, ALPHA + n * BETA) is None  # one line fits: no break
    assert fit.find_break(sizes[:3], bent[:3]) is None  # too few sizes for two sides
