"""Megatron's operators on an emulated split (one process holding every shard): their values,
and each backward the adjoint of its forward."""
from mpi4py import MPI
import numpy as np
import pytest
from tp_cases import adjoint_gaps

from mpipar.parallel.tensor_parallel import TPGroup


def test_megatron_operators_on_an_emulated_split():
    tp = TPGroup(MPI.COMM_SELF, ways=3)
    x = np.arange(2 * 7, dtype=np.float32).reshape(2, 7)
    parts = tp.scatter_to_tp(x)  # this process holds all 3 shards: np.array_split's blocks
    assert [p.shape[-1] for p in parts] == [3, 2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(parts, np.array_split(x, 3, axis=-1)))
    assert np.array_equal(tp.gather_from_tp(parts), x)  # gather undoes scatter
    assert tp.copy_to_tp(x) is x  # f: the identity forward ...
    assert np.array_equal(tp.copy_to_tp_backward([x, x, x]), (x + x) + x)  # ... g's sum backward
    assert np.array_equal(tp.reduce_from_tp([x, x, x]), (x + x) + x)  # g: sum in shard order ...
    assert tp.reduce_from_tp_backward(x) is x  # ... the identity backward
    assert all(np.array_equal(a, b) for a, b in zip(tp.gather_from_tp_backward(x), parts))
    assert np.array_equal(tp.scatter_to_tp_backward(parts), x)
    assert np.array_equal(tp.max_from_tp([x, -x, 2 * x]), np.maximum(x, 2 * x))


@pytest.mark.parametrize("ways", [1, 2, 3])
@pytest.mark.parametrize("deterministic", [False, True])
def test_each_backward_is_the_adjoint_of_its_forward(ways, deterministic):
    gaps = adjoint_gaps(TPGroup(MPI.COMM_SELF, ways=ways, deterministic=deterministic))
    assert gaps == dict.fromkeys(gaps, 0.0)
