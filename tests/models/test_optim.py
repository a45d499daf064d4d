"""AdamW's update in cache-sized blocks is the whole-array formula, bit for bit."""
import numpy as np
import pytest

from mpipar.models.optim import BLOCK, adamw_update
from mpipar.models.optim import adamw_whole_arrays as whole_array_formula


def arrays(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p, g, m = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    return [p, g, m, np.abs(rng.standard_normal(shape)).astype(dtype)]


@pytest.mark.parametrize("shape", [(7,), (BLOCK,), (3 * BLOCK + 5,), (129, 257), (2, 3, BLOCK // 2 + 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_blocks_give_the_bits_of_the_whole_array_formula(shape, dtype, wd):
    ours, ref = arrays(shape, dtype), arrays(shape, dtype)
    for step in (1, 2, 3):  # the moments carry over from step to step
        c1, c2 = 1 - 0.9 ** step, 1 - 0.98 ** step
        adamw_update(*ours, 1e-3, (0.9, 0.98), 1e-8, wd, c1, c2)
        whole_array_formula(*ref, 1e-3, (0.9, 0.98), 1e-8, wd, c1, c2)
        for a, b in zip(ours, ref):
            assert a.dtype == dtype and np.array_equal(a, b)


def test_non_contiguous_parameters_are_updated_in_place():
    base, ref = arrays((64, 96), np.float32), arrays((64, 96), np.float32)
    ours = [a[:, ::3] for a in base]  # strided views: updated where they are, not in a copy
    ref = [a[:, ::3].copy() for a in ref]
    adamw_update(*ours, 1e-3, (0.9, 0.98), 1e-8, 0.01, 0.1, 0.02)
    whole_array_formula(*ref, 1e-3, (0.9, 0.98), 1e-8, 0.01, 0.1, 0.02)
    assert all(np.array_equal(base[i][:, ::3], ref[i]) for i in (0, 2, 3))
    assert not np.array_equal(base[0][:, ::3], arrays((64, 96), np.float32)[0][:, ::3])


def test_a_gradient_of_another_dtype_follows_numpys_promotions():
    ours, ref = arrays((100,), np.float32), arrays((100,), np.float32)
    ours[1], ref[1] = ours[1].astype(np.float64), ref[1].astype(np.float64)
    adamw_update(*ours, 1e-3, (0.9, 0.98), 1e-8, 0.01, 0.1, 0.02)
    whole_array_formula(*ref, 1e-3, (0.9, 0.98), 1e-8, 0.01, 0.1, 0.02)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
