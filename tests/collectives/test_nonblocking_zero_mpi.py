"""The non-blocking ring reduce-scatter and allgather (ZeRO's overlap) give the bits of the
blocking rings, for every length -- uneven, shorter than p, empty -- and send the same bytes."""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allgather, reduce_scatter
from mpipar.collectives.nonblocking_allgather import RingAllgather
from mpipar.collectives.nonblocking_reduce_scatter import RingReduceScatter
from mpipar.measure.ledger import CommLedger

WORLD = MPI.COMM_WORLD


def sent(led):
    return sum(r["bytes_sent"] for r in led.to_dict()["records"])


@pytest.mark.mpi
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1001])
def test_ring_reduce_scatter_is_the_blocking_ring(n):
    x = np.random.default_rng(WORLD.Get_rank()).standard_normal(n).astype(np.float32)
    with CommLedger() as blocking:
        want = reduce_scatter(WORLD, x, algorithm="ring", check=False)
    with CommLedger() as polled:
        ring = RingReduceScatter(WORLD, x.copy()).start()
        while not ring.progress():
            pass
    assert np.array_equal(ring.result, want)
    assert sent(polled) == sent(blocking)


@pytest.mark.mpi
@pytest.mark.parametrize("base", [0, 1, 5])
def test_ring_allgather_is_the_blocking_ring_for_uneven_blocks(base):
    p, rank = WORLD.Get_size(), WORLD.Get_rank()
    lengths = [base + (r % 2) for r in range(p)]
    mine = np.arange(lengths[rank], dtype=np.float64) + 100 * rank
    with CommLedger() as blocking:
        want = allgather(WORLD, mine, algorithm="ring", check=False)
    with CommLedger() as waited:
        got = RingAllgather(WORLD, mine, lengths, tag=99).start().wait()
    assert np.array_equal(got, want)
    assert sent(waited) == sent(blocking)


def test_wrong_lengths_are_refused_before_any_message():
    with pytest.raises(ValueError, match="holds 3 numbers"):
        RingAllgather(MPI.COMM_SELF, np.zeros(3), [2])
    with pytest.raises(ValueError, match="1-D"):
        RingReduceScatter(MPI.COMM_SELF, np.zeros((2, 2)))
