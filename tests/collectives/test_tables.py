"""The algorithm tables: a collective's table is all there is to an algorithm.

Each of allreduce.py, allgather.py, reduce_scatter.py and broadcast.py ends with
``ALGORITHMS`` (name -> Algorithm(run, cost)); the collectives dispatch through it,
the cost model reads its formulas, "auto" chooses from it. One process, COMM_SELF.
"""
import importlib

from mpi4py import MPI
import numpy as np
import pytest

from mpipar import collectives
from mpipar.measure.cost_model import Algorithm, CostModel
from mpipar.measure.ledger import CommLedger

OPS = ("allreduce", "allgather", "reduce_scatter", "broadcast")


def module(op):
    return importlib.import_module(f"mpipar.collectives.{op}")


def test_one_table_per_collective_in_a_fixed_order():
    assert tuple(collectives.ALGORITHMS) == OPS
    for op in OPS:
        table = collectives.ALGORITHMS[op]
        assert table is module(op).ALGORITHMS
        for name, entry in table.items():
            assert isinstance(entry, Algorithm) and entry.run is getattr(module(op), name)


@pytest.mark.parametrize("op", OPS)
def test_predictions_are_the_tables_formulas(op):
    model = CostModel(alpha=3e-6, beta=7e-10, gamma=5e-11)
    for name, entry in collectives.ALGORITHMS[op].items():
        for p, n in [(2, 8), (3, 1000), (8, 1 << 20), (13, 77)]:
            assert model.predict(op, name, p, n) == entry.cost(p, n, 3e-6, 7e-10, 5e-11)


def test_a_new_table_entry_is_all_an_algorithm_needs(monkeypatch):
    """An allreduce added to the table only: the collective runs it, the ledger records
    it with the table's prediction, and "auto" picks it where its formula is cheapest."""
    calls = []

    def doubled_naive(ch, x, op):
        calls.append(op)
        return module("allreduce").naive(ch, x, op)

    free = Algorithm(doubled_naive, lambda p, n, alpha, beta, gamma: 0.0)
    monkeypatch.setitem(module("allreduce").ALGORITHMS, "doubled_naive", free)
    x = np.arange(5, dtype=np.float32)
    with CommLedger() as led:
        y = collectives.allreduce(MPI.COMM_SELF, x, algorithm="doubled_naive")
    assert calls == ["sum"] and y.tolist() == x.tolist()
    (record,) = led.records
    assert record["algorithm"] == "doubled_naive" and record["predicted_seconds"] == 0.0
    assert CostModel().best("allreduce", 4, 1 << 20) == "doubled_naive"
    with pytest.raises(ValueError, match="doubled_naive"):  # it is listed among the choices
        collectives.allreduce(MPI.COMM_SELF, x, algorithm="bogus")
