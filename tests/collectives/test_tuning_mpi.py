"""Measured decision tables: written, read by rank 0, obeyed by ``auto`` on every rank;
a corrupt table named explicitly is one clear error everywhere, a corrupt cache one warning.

Each test runs on a fresh duplicate of COMM_WORLD, since a communicator keeps the
table it loaded (an MPI attribute) for its lifetime.
"""
import json
import warnings

from mpi4py import MPI
import numpy as np
import pytest

from mpipar import collectives
from mpipar.collectives import tuning
from mpipar.measure.cost_model import CostModel
from mpipar.measure.ledger import CommLedger

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()


def table(p=P, **rules):
    return {"format": tuning.FORMAT, "version": tuning.VERSION, "world_size": p,
            "host": "test", "mpi_library": "test", "dtype": "float32", "rules": rules}


RULES = dict(allreduce=[{"below": 100, "algorithm": "naive"}, {"below": None, "algorithm": "tree"}],
             allgather=[{"below": None, "algorithm": "bruck"}])


@pytest.fixture
def comm():
    c = COMM.Dup()
    yield c
    c.Free()


def shared_path(tmp_path, name):
    """Rank 0's path (only rank 0 reads the table), the same string on every rank."""
    return COMM.bcast(str(tmp_path / name), root=0)


def write_on_rank0(path, text):
    if RANK == 0:
        with open(path, "w") as f:
            f.write(text)
    COMM.Barrier()


def chosen(comm, call):
    with CommLedger() as led:
        call()
    return led.records[-1]["algorithm"]


@pytest.mark.mpi
def test_auto_follows_the_table(comm, tmp_path, monkeypatch):
    path = shared_path(tmp_path, "table.json")
    write_on_rank0(path, json.dumps(table(**RULES)))
    monkeypatch.setenv("MPIPAR_TUNING", path)
    found = tuning.table_for(comm)
    assert found["table"]["rules"] == RULES
    assert tuning.decision(comm, "allreduce", 99) == "naive"
    assert tuning.decision(comm, "allreduce", 100) == "tree"
    assert tuning.decision(comm, "broadcast", 100) is None  # not in the table: the model's
    if P == 1:
        return  # one rank runs no algorithm at all
    assert chosen(comm, lambda: collectives.allreduce(comm, np.ones(2, np.float32))) == "naive"
    y = np.ones(1000, np.float32)
    assert chosen(comm, lambda: collectives.allreduce(comm, y)) == "tree"
    assert chosen(comm, lambda: collectives.allgather(comm, y)) == "bruck"
    assert chosen(comm, lambda: collectives.broadcast(comm, y)) == CostModel().best("broadcast", P, 4000)
    assert collectives.allreduce(comm, y).tolist() == [P] * 1000


@pytest.mark.mpi
def test_the_ledger_predicts_with_the_tables_constants(comm, tmp_path, monkeypatch):
    """A table saved with calibrated constants: the ledger's predictions use them (and the
    defaults where there is none), without being told."""
    tuned = CostModel(alpha=3e-5, beta=1e-9, gamma=4e-10, o=2e-6, source="contention, test")
    path = shared_path(tmp_path, "tuned.json")
    write_on_rank0(path, json.dumps({**table(**RULES), "cost_model": tuned.to_dict()}))
    y = np.ones(1000, np.float32)
    for env, model in ((path, tuned), ("off", CostModel())):
        monkeypatch.setenv("MPIPAR_TUNING", env)
        with CommLedger() as led:
            collectives.allreduce(comm, y, algorithm="ring")
        r = led.records[-1]
        assert r["predicted_seconds"] == model.predict("allreduce", "ring", P, 4000)
        assert led.to_dict()["cost_model"] == model.to_dict()
        assert f"predictions: {model.source} model" in led.summary()


@pytest.mark.mpi
def test_a_table_for_another_size_is_not_used(comm, tmp_path, monkeypatch):
    path = shared_path(tmp_path, "other.json")
    write_on_rank0(path, json.dumps(table(p=P + 1, **RULES)))
    monkeypatch.setenv("MPIPAR_TUNING", path)
    assert tuning.table_for(comm)["table"] is None
    assert tuning.decision(comm, "allreduce", 8) is None


@pytest.mark.mpi
def test_off_means_the_model(comm, monkeypatch):
    monkeypatch.setenv("MPIPAR_TUNING", "off")
    assert tuning.table_for(comm)["table"] is None


@pytest.mark.mpi
@pytest.mark.parametrize("content,match", [
    ("{not json", "not JSON"),
    (json.dumps({"format": "other"}), "not an mpipar tuning table"),
    (json.dumps(table(allreduce=[{"below": None, "algorithm": "bruck"}])), "algorithm 'bruck'"),
    (None, "cannot read it"),
])
def test_a_bad_table_named_explicitly_is_an_error_on_every_rank(comm, tmp_path, monkeypatch,
                                                                  content, match):
    path = shared_path(tmp_path, "bad.json")
    if content is not None:
        write_on_rank0(path, content)
    monkeypatch.setenv("MPIPAR_TUNING", path)
    with pytest.raises(ValueError) as info:
        collectives.allreduce(comm, np.ones(4, np.float32)) if P > 1 else tuning.table_for(comm)
    message = str(info.value)
    assert message.startswith(f"MPIPAR_TUNING={path}: ") and match in message
    assert COMM.allgather(message) == [message] * P
    assert collectives.allreduce(comm, np.ones(3), algorithm="ring").tolist() == [P] * 3


@pytest.mark.mpi
def test_a_corrupt_cache_is_ignored_with_one_warning(comm, tmp_path, monkeypatch):
    cache = shared_path(tmp_path, "cache")
    monkeypatch.delenv("MPIPAR_TUNING")
    monkeypatch.setenv("XDG_CACHE_HOME", cache)
    path = tuning.cache_path(P)
    if RANK == 0:
        import os
        os.makedirs(os.path.dirname(path))
    write_on_rank0(path, '{"format": "mpipar-tuning", "version": 1, "world_size": ')
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert tuning.table_for(comm)["table"] is None
        tuning.table_for(comm)  # kept: no second warning
    assert len(seen) == (1 if RANK == 0 else 0)
    if RANK == 0:
        assert "ignoring the tuning cache" in str(seen[0].message) and path in str(seen[0].message)
    x = np.ones(2, np.float32)
    if P > 1:
        assert chosen(comm, lambda: collectives.allreduce(comm, x)) == CostModel().best("allreduce", P, 8)


@pytest.mark.mpi
def test_a_valid_cache_is_found(comm, tmp_path, monkeypatch):
    monkeypatch.delenv("MPIPAR_TUNING")
    monkeypatch.setenv("XDG_CACHE_HOME", shared_path(tmp_path, "cache"))
    if RANK == 0:
        tuning.write(tuning.cache_path(P), table(**RULES))
    COMM.Barrier()
    assert tuning.decision(comm, "allgather", 1 << 20) == "bruck"


def test_cache_path_and_library_names(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert tuning.cache_path(4, host="h", library="l") == "/x/mpipar/tuning/h-l-p4.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tuning.cache_path(2, host="h", library="l").endswith("/.cache/mpipar/tuning/h-l-p2.json")
    assert tuning.library_slug("MPICH Version:      4.2.1\nMPICH Release date") == "mpich-4.2.1"
    assert tuning.library_slug("Open MPI v4.1.6, package: Debian") == "open-mpi-v4.1.6"


@pytest.mark.parametrize("rules,match", [
    ({"allreduce": []}, "non-empty"),
    ({"gather": [{"below": None, "algorithm": "ring"}]}, "unknown op"),
    ({"allreduce": [{"below": 8, "algorithm": "ring"}]}, "last rule"),
    ({"allreduce": [{"below": 8, "algorithm": "ring"}, {"below": 8, "algorithm": "tree"},
                    {"below": None, "algorithm": "ring"}]}, "above 8"),
])
def test_bad_rules_are_named(rules, match):
    assert match in tuning.problem(table(**rules))


def test_rules_print_like_fixed_decision_rules():
    text = tuning.rules_text(table(p=4, **RULES))
    assert "communicator_size == 4" in text
    assert "if (total_dsize < 100)" in text and "else" in text and "algorithm = tree;" in text
    assert tuning.choose(table(**RULES), "allreduce", 0) == "naive"


@pytest.mark.mpi(min_size=2)
def test_auto_remembers_its_choice_per_op_and_size(monkeypatch):
    """Evaluating every algorithm's formula costs as much as a small message: auto decides once
    per (op, bytes) on a communicator, the model's choice, the same on every rank."""
    monkeypatch.setenv("MPIPAR_TUNING", "off")
    comm = COMM.Dup()
    try:
        collectives.allreduce(comm, np.ones(3, np.float32))
        collectives.allreduce(comm, np.ones(3, np.float32))
        choices = tuning.table_for(comm)["choices"]
        assert choices == {("allreduce", 12): CostModel().best("allreduce", comm.Get_size(), 12)}
        assert all(c == choices for c in comm.allgather(choices))
    finally:
        comm.Free()
