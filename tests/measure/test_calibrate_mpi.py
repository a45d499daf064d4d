"""CostModel.calibrate on 1-4 ranks: positive finite constants, the same on every rank,
saying how they were measured; a Calibration keeps its trials for the spread."""
import math

from mpi4py import MPI
import pytest

from mpipar.measure import calibrate, fit
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


@pytest.mark.mpi
def test_contention_measures_every_algorithms_call_overhead_outside_any_ledger():
    from mpipar.collectives import ALGORITHMS
    from mpipar.measure.ledger import CommLedger
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    with CommLedger() as led:
        model = CostModel.calibrate(comm, sizes=(8, 1024, 65536), trials=2)
    assert led.records == []  # the calibration's own calls are not the program's
    want = [(op, alg) for op, table in ALGORITHMS.items() for alg in (*table, "mpi")]
    assert [(op, alg) for op, alg, _ in model.call] == (want if p > 1 else [])
    assert all(math.isfinite(s) and s >= 0 for _, _, s in model.call)
    assert CostModel.calibrate(comm, sizes=(8, 1024, 65536), trials=1, method="pingpong").call == ()


def test_a_break_in_the_exchange_times_gives_a_second_set_of_constants():
    sizes = (8, 1024, 16384, 65536, 262144, 1 << 20, 1 << 22, 1 << 24)
    line = lambda n, beta: 3e-6 + n * beta  # noqa: E731
    raw = [[line(n, 1e-10 if n < 1 << 20 else 2.5e-10) for n in sizes]] * 3
    step = [[t + 2e-6 for t in raw[0]]] * 3
    local = [[n * (4e-11 if n < 1 << 20 else 1e-10) for n in sizes]] * 3
    model = fit.cost_model(sizes, raw, step, local, local, raw, "synthetic")
    assert (model.small_up_to, model.large_from) == (1 << 18, 1 << 20)
    assert model.beta == pytest.approx(1e-10) and model.large.beta == pytest.approx(2.5e-10)
    assert model.large.alpha == model.alpha and model.large.o == model.o == pytest.approx(2e-6)
    assert model.gamma == pytest.approx(4e-11) and model.large.gamma == pytest.approx(1e-10)
    flat = fit.cost_model(sizes, [[line(n, 1e-10) for n in sizes]] * 3, step, local, local, None, "s")
    assert flat.large is None and flat.beta_alone is None
