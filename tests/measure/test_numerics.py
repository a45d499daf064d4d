"""Bitwise, ULP and normalised-error comparisons on hand-checkable values."""
import ml_dtypes
import numpy as np
import pytest

from mpipar.measure import numerics

BF16 = ml_dtypes.bfloat16


def test_unit_roundoff():
    assert numerics.unit_roundoff(np.float32) == 2.0 ** -24
    assert numerics.unit_roundoff(np.float64) == 2.0 ** -53
    assert numerics.unit_roundoff(np.float16) == 2.0 ** -11
    assert numerics.unit_roundoff(BF16) == 2.0 ** -8
    assert numerics.unit_roundoff(np.int64) == 0.0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, BF16])
def test_ulp_distance_counts_representable_numbers(dtype):
    one = np.array([1.0], dtype)
    up = np.nextafter(np.float64(1), 2).astype(dtype) if dtype == np.float64 else None
    x = one.copy()
    x.view(f"u{one.itemsize}")[0] += 3  # three floats above 1
    assert numerics.max_ulp(one, x) == 3
    assert numerics.max_ulp(-one, -x) == 3
    if up is not None:
        assert numerics.max_ulp(one, np.array([up])) == 1


def test_zero_signs_and_crossing_zero():
    z, nz = np.array([0.0], np.float32), np.array([-0.0], np.float32)
    assert numerics.max_ulp(z, nz) == 0
    tiny = np.array([np.float32(1e-45)])  # the smallest subnormal
    assert numerics.max_ulp(tiny, -tiny) == 2
    assert not numerics.bitwise_equal(z, nz)


def test_a_nan_never_matches():
    a = np.array([np.nan, 1.0])
    assert numerics.max_ulp(a, a) == np.inf
    assert numerics.max_ulp(a, np.array([1.0, 1.0])) == np.inf
    assert not numerics.bitwise_equal(a, a.copy())
    assert numerics.bitwise_equal(np.array([np.inf, 1.0]), np.array([np.inf, 1.0]))
    assert numerics.normalized_error(a, a, np.ones(2)) == np.inf


def test_normalized_error():
    computed = np.array([1.0 + 2 ** -23], np.float32)  # one float32 ULP above 1
    # error 2^-23 against u * sum|x| = 2^-24 * 1: two units
    assert numerics.normalized_error(computed, [1.0], [1.0]) == pytest.approx(2.0)
    assert numerics.normalized_error(np.zeros(3, np.float32), np.zeros(3), np.zeros(3)) == 0.0


def test_cancellation_huge_ulp_small_normalized_error():
    terms = np.array([1.0, -1.0 + 2 ** -20], np.float32)
    exact = terms.astype(np.float64).sum()
    wrong_by_one_ulp_of_one = np.float32(exact) + np.float32(2 ** -24)
    assert numerics.max_ulp(np.array([wrong_by_one_ulp_of_one]), np.array([exact], np.float32)) > 1000
    assert numerics.normalized_error([wrong_by_one_ulp_of_one], [exact], [np.abs(terms).sum()]) < 1


def test_compare_and_digest():
    a = np.arange(5, dtype=np.float32)
    rep = numerics.compare(a, a.copy(), reference=a.astype(np.float64), abs_sum=np.abs(a))
    assert rep == {"bitwise_equal": True, "max_ulp": 0.0, "max_normalized_error": 0.0}
    assert numerics.digest(a) == numerics.digest(a.copy())
    assert numerics.digest(a) != numerics.digest(a.astype(np.float64))
