"""CostModel.calibrate on 1-4 ranks: positive finite constants, the same on every rank,
saying how they were measured; a Calibration keeps its trials for the spread."""
import math

from mpi4py import MPI
import pytest

from mpipar.measure import calibrate
from mpipar.measure.cost_model import CostModel


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["contention", "pingpong"])
def test_calibrate_gives_positive_finite_constants_on_every_rank(method):
    comm = MPI.COMM_WORLD
    model = CostModel.calibrate(comm, sizes=(8, 1024, 65536), trials=2, method=method)
    for value in (model.alpha, model.beta, model.gamma, model.kappa):
        assert math.isfinite(value) and value > 0
    assert math.isfinite(model.o) and (model.o >= 0 if method == "contention" else model.o == 0)
    assert ("contention" if method == "contention" else "ping-pong") in model.source
    assert comm.allgather(model) == [model] * comm.Get_size()


@pytest.mark.mpi
def test_a_calibration_keeps_its_trials_for_the_spread():
    comm = MPI.COMM_WORLD
    cal = calibrate.calibrate(comm, sizes=(8, 4096, 1 << 16), trials=3)
    assert len(cal.raw) == len(cal.step) == len(cal.add) == len(cal.copy) == 3
    assert all(len(row) == 3 and min(row) > 0 for row in cal.raw + cal.step + cal.add + cal.copy)
    fits = cal.fits()
    assert len(fits) == 3 and all(f["alpha"] > 0 and f["beta"] > 0 and f["o"] >= 0 for f in fits)
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate.calibrate(comm, "loggp")


def test_a_benchmark_of_large_messages_calibrates_on_them_too():
    assert calibrate.sizes_up_to(4096) == calibrate.sizes_up_to(1 << 22) == calibrate.SIZES
    assert calibrate.sizes_up_to(16 << 20) == calibrate.SIZES + (16 << 20,)
    assert calibrate.sizes_up_to(5 << 20) == calibrate.SIZES + (16 << 20,)  # the next 4x step
    assert calibrate.sizes_up_to(1 << 30)[-1] == calibrate.LARGEST == 16 << 20
