"""max and min propagate NaN, as np.maximum and np.minimum do, in every hand-written algorithm.

A NaN on any one rank makes that element NaN on every rank, whichever algorithm
and whichever rank holds it. MPI libraries do not promise this (the standard
leaves MPI_MAX of NaN unspecified; MPICH's MPI_MAX drops the NaN in some cases),
so ``"mpi"`` is not tested here.
"""
import ml_dtypes
from mpi4py import MPI
import numpy as np
import pytest

from mpipar import collectives
from mpipar.collectives import ALGORITHMS

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()


def inputs(dtype, n=7):
    """Element j is NaN on rank j mod p only (element n-1 on no rank); the rest rank + j."""
    x = (np.arange(n) + RANK).astype(np.float64)
    x[[j for j in range(n - 1) if j % P == RANK]] = np.nan
    return x.astype(dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("name", ["allreduce", "reduce_scatter"])
def test_nan_propagates(name, op, dtype):
    x = inputs(dtype)
    want = np.full(x.size, np.nan)
    want[-1] = (P - 1 if op == "max" else 0) + x.size - 1
    for alg in ALGORITHMS[name]:
        got = getattr(collectives, name)(COMM, x, op=op, algorithm=alg).astype(np.float64)
        mine = want if name == "allreduce" else np.array_split(want, P)[RANK]
        assert np.array_equal(got, mine, equal_nan=True), (alg, got)
