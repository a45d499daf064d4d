"""Mesh: coordinates, group membership and rank order for every dp x tp factorisation.

Each test collects what went wrong on this rank and asserts on the list gathered
from every rank (``helpers.all_ranks_ok``), so all ranks pass or fail together.
"""
from helpers import all_ranks_ok
from mpi4py import MPI
import pytest

from mpipar.parallel.mesh import Mesh

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
FACTORISATIONS = [(d, P // d) for d in range(1, P + 1) if P % d == 0]


def errors_everywhere(fn):
    """The message of the ValueError fn raises on this rank (None if it raises none)."""
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.mpi
@pytest.mark.parametrize("dp,tp", FACTORISATIONS)
def test_coordinates_and_groups(dp, tp):
    problems = []
    with Mesh(COMM, dp, tp) as mesh:
        i, j = RANK // tp, RANK % tp
        if (mesh.dp, mesh.tp, mesh.dp_rank, mesh.tp_rank) != (dp, tp, i, j):
            problems.append(f"coords {(mesh.dp, mesh.tp, mesh.dp_rank, mesh.tp_rank)}")
        if mesh.rank_of(i, j) != RANK or mesh.coords(RANK) != (i, j):
            problems.append("rank_of / coords do not invert each other")
        sizes = (mesh.dp_comm.Get_size(), mesh.tp_comm.Get_size())
        ranks = (mesh.dp_comm.Get_rank(), mesh.tp_comm.Get_rank())
        if sizes != (dp, tp) or ranks != (i, j):
            problems.append(f"group sizes {sizes} ranks {ranks}")
        # members in group rank order: a dp group is a column, a tp group a row
        dp_members = mesh.dp_comm.allgather(RANK)
        tp_members = mesh.tp_comm.allgather(RANK)
        if dp_members != [k * tp + j for k in range(dp)]:
            problems.append(f"dp group {dp_members}")
        if tp_members != list(range(i * tp, (i + 1) * tp)):
            problems.append(f"tp group {tp_members}")
        if mesh.world is not COMM:
            problems.append("world is not the communicator given")
        text = mesh.describe()
        row = text.splitlines()[2 + i].split()
        if row != [f"dp={i}"] + [str(i * tp + k) for k in range(tp)]:
            problems.append(f"describe() row {i}: {row}")
    if mesh.dp_comm != MPI.COMM_NULL or mesh.tp_comm != MPI.COMM_NULL:
        problems.append("close() left a communicator allocated")
    mesh.close()  # idempotent
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_build_fills_the_missing_degree():
    problems = []
    for dp, tp in FACTORISATIONS:
        for kwargs in (dict(dp=dp), dict(tp=tp), dict(dp=dp, tp=tp)):
            with Mesh.build(COMM, **kwargs) as mesh:
                if (mesh.dp, mesh.tp) != (dp, tp):
                    problems.append(f"build({kwargs}) -> {mesh.dp}x{mesh.tp}")
    with Mesh.build(COMM) as mesh:
        if (mesh.dp, mesh.tp, mesh.dp_comm.Get_size(), mesh.tp_comm.Get_size()) != (P, 1, P, 1):
            problems.append("the default is not all data-parallel")
    all_ranks_ok(problems)


@pytest.mark.mpi
@pytest.mark.parametrize("make", [
    lambda: Mesh(COMM, P + 1, 1),
    lambda: Mesh(COMM, 0, P),
    lambda: Mesh(COMM, P, -1),
    lambda: Mesh(COMM, 1.0 * P, 1),
    lambda: Mesh.build(COMM, dp=P + 1),
    lambda: Mesh.build(COMM, tp=0),
    lambda: Mesh.build(COMM, dp=P, tp=2),
], ids=["product", "dp0", "tp-1", "float", "dp-not-divisor", "build-tp0", "build-both"])
def test_wrong_grid_raises_the_same_error_everywhere(make):
    message = errors_everywhere(make)
    messages = COMM.allgather(message)
    assert message is not None and message.startswith("Mesh: ")
    assert all(m == messages[0] for m in messages)


@pytest.mark.mpi
@pytest.mark.skipif(P == 1, reason="one rank cannot disagree with itself")
def test_ranks_that_disagree_raise_the_same_error():
    dp, tp = (1, P) if RANK == 0 else (P, 1)  # each valid on its own
    message = errors_everywhere(lambda: Mesh(COMM, dp, tp))
    messages = COMM.allgather(message)
    assert message is not None and "disagree" in message
    assert all(m == messages[0] for m in messages)
