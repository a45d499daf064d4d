"""Mesh: coordinates, group membership and rank order for every dp x pp x tp factorisation.

Each test collects what went wrong on this rank and asserts on the list gathered
from every rank (``helpers.all_ranks_ok``), so all ranks pass or fail together.
"""
from helpers import all_ranks_ok
from mpi4py import MPI
import pytest

from mpipar.parallel.mesh import Coords, Mesh

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
FACTORISATIONS = [(d, P // d) for d in range(1, P + 1) if P % d == 0]
FACTORISATIONS_3D = [(d, q, P // (d * q)) for d in range(1, P + 1) for q in range(1, P + 1)
                     if P % (d * q) == 0]  # (dp, pp, tp)


def errors_everywhere(fn):
    """The message of the ValueError fn raises on this rank (None if it raises none)."""
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def members(comm):
    """World ranks of ``comm`` in its rank order (None for COMM_NULL)."""
    return None if comm == MPI.COMM_NULL else comm.allgather(RANK)


@pytest.mark.mpi
@pytest.mark.parametrize("dp,tp", FACTORISATIONS)
def test_coordinates_and_groups(dp, tp):
    problems = []
    with Mesh(COMM, dp, tp) as mesh:
        i, j = RANK // tp, RANK % tp
        if (mesh.dp, mesh.tp, mesh.pp, mesh.dp_rank, mesh.tp_rank, mesh.pp_rank) != (dp, tp, 1, i, j, 0):
            problems.append(f"coords {(mesh.dp, mesh.tp, mesh.dp_rank, mesh.tp_rank)}")
        if mesh.rank_of(i, j) != RANK or mesh.coords(RANK) != (i, j, 0):
            problems.append("rank_of / coords do not invert each other")
        sizes = (mesh.dp_comm.Get_size(), mesh.tp_comm.Get_size())
        ranks = (mesh.dp_comm.Get_rank(), mesh.tp_comm.Get_rank())
        if sizes != (dp, tp) or ranks != (i, j):
            problems.append(f"group sizes {sizes} ranks {ranks}")
        # members in group rank order: a dp group is a column, a tp group a row
        if members(mesh.dp_comm) != [k * tp + j for k in range(dp)]:
            problems.append(f"dp group {members(mesh.dp_comm)}")
        if members(mesh.tp_comm) != list(range(i * tp, (i + 1) * tp)):
            problems.append(f"tp group {members(mesh.tp_comm)}")
        if members(mesh.pp_comm) != [RANK] or members(mesh.embedding_comm) != [RANK]:
            problems.append("with pp = 1 the pipeline and embedding groups are not the rank alone")
        if mesh.world is not COMM:
            problems.append("world is not the communicator given")
        text = mesh.describe()
        row = text.splitlines()[2 + i].split()
        if row != [f"dp={i}"] + [str(i * tp + k) for k in range(tp)]:
            problems.append(f"describe() row {i}: {row}")
    if any(c != MPI.COMM_NULL for c in (mesh.dp_comm, mesh.tp_comm, mesh.pp_comm, mesh.embedding_comm)):
        problems.append("close() left a communicator allocated")
    mesh.close()  # idempotent
    all_ranks_ok(problems)


def expected_groups(dp, pp, tp, rank):
    """Every group of ``rank`` by the layout rank = (i * pp + k) * tp + j, written out longhand."""
    grid = {(i, k, j): (i * pp + k) * tp + j for i in range(dp) for k in range(pp) for j in range(tp)}
    i, k, j = next(c for c, r in grid.items() if r == rank)
    ends = sorted({0, pp - 1})
    return dict(
        coords=(i, j, k),
        dp=[grid[a, k, j] for a in range(dp)],
        pp=[grid[i, a, j] for a in range(pp)],
        tp=[grid[i, k, a] for a in range(tp)],
        embedding=[grid[i, a, j] for a in ends] if k in ends else None,
        replica=sorted(r for (a, _, _), r in grid.items() if a == i))


@pytest.mark.mpi
@pytest.mark.parametrize("dp,pp,tp", FACTORISATIONS_3D)
def test_every_3d_factorisation(dp, pp, tp):
    problems = []
    want = expected_groups(dp, pp, tp, RANK)
    with Mesh(COMM, dp, tp, pp=pp) as mesh:
        got = (mesh.dp_rank, mesh.tp_rank, mesh.pp_rank)
        if got != want["coords"] or mesh.coords(RANK) != want["coords"]:
            problems.append(f"coords {got}, coords() {mesh.coords(RANK)}, want {want['coords']}")
        for r in range(P):  # round trip for every rank, not only this one
            c = mesh.coords(r)
            if not isinstance(c, Coords) or mesh.rank_of(*c) != r or mesh.rank_of(**c._asdict()) != r:
                problems.append(f"rank_of(coords({r})) = {mesh.rank_of(*c)}")
        for axis, comm, index in (("dp", mesh.dp_comm, mesh.dp_rank), ("pp", mesh.pp_comm, mesh.pp_rank),
                                  ("tp", mesh.tp_comm, mesh.tp_rank)):
            if members(comm) != want[axis] or comm.Get_rank() != index:
                problems.append(f"{axis} group {members(comm)} (rank {comm.Get_rank()}), want {want[axis]}")
        if members(mesh.embedding_comm) != want["embedding"]:
            problems.append(f"embedding group {members(mesh.embedding_comm)}, want {want['embedding']}")
        flags = (mesh.is_first_stage, mesh.is_last_stage, mesh.in_embedding_group)
        if flags != (mesh.pp_rank == 0, mesh.pp_rank == pp - 1, want["embedding"] is not None):
            problems.append(f"first/last/embedding flags {flags}")
        if pp >= 2 and mesh.in_embedding_group and mesh.embedding_comm.Get_size() != 2:
            problems.append("the embedding group of a pipeline is not two ranks")
        # a model replica is the pp * tp contiguous ranks of one dp index
        start = mesh.dp_rank * pp * tp
        if want["replica"] != list(range(start, start + pp * tp)):
            problems.append(f"replica {want['replica']} is not contiguous")
        lines = mesh.describe().splitlines()
        label = f"dp={mesh.dp_rank}" if pp == 1 else f"dp={mesh.dp_rank} pp={mesh.pp_rank}"
        rows = [line for line in lines if line.startswith(label + " ")]
        if len(rows) != 1 or rows[0][len(label):].split() != [str(r) for r in want["tp"]]:
            problems.append(f"describe() has no row {label!r} listing {want['tp']}: {rows}")
    comms = (mesh.dp_comm, mesh.tp_comm, mesh.pp_comm, mesh.embedding_comm)
    if any(c != MPI.COMM_NULL for c in comms):
        problems.append("close() left a communicator allocated")
    all_ranks_ok(problems)


@pytest.mark.mpi
def test_describe_a_pipeline():
    with Mesh(COMM, 1, 1, pp=P) as mesh:
        text = mesh.describe()
    lines = text.splitlines()
    assert lines[0] == (f"mesh: 1 (dp) x {P} (pp) x 1 (tp) = {P} ranks; world rank at (dp, pp, tp)"
                        if P > 1 else "mesh: 1 (dp) x 1 (tp) = 1 ranks; world rank at (dp, tp) -- "
                        "a row is a tp group, a column a dp group")
    if P > 1:
        assert [line.split() for line in lines[3:]] == [["dp=0", f"pp={k}", str(k)] for k in range(P)]


@pytest.mark.mpi
def test_build_fills_the_missing_degree():
    problems = []
    for dp, tp in FACTORISATIONS:
        for kwargs in (dict(dp=dp), dict(tp=tp), dict(dp=dp, tp=tp)):
            with Mesh.build(COMM, **kwargs) as mesh:
                if (mesh.dp, mesh.tp, mesh.pp) != (dp, tp, 1):
                    problems.append(f"build({kwargs}) -> {mesh.dp}x{mesh.tp}")
    with Mesh.build(COMM) as mesh:
        if (mesh.dp, mesh.tp, mesh.dp_comm.Get_size(), mesh.tp_comm.Get_size()) != (P, 1, P, 1):
            problems.append("the default is not all data-parallel")
    for dp, pp, tp in FACTORISATIONS_3D:
        for kwargs in (dict(pp=pp, dp=dp), dict(pp=pp, tp=tp), dict(dp=dp, pp=pp, tp=tp)):
            with Mesh.build(COMM, **kwargs) as mesh:
                if (mesh.dp, mesh.pp, mesh.tp) != (dp, pp, tp):
                    problems.append(f"build({kwargs}) -> {mesh.dp}x{mesh.pp}x{mesh.tp}")
        with Mesh.build(COMM, pp=pp) as mesh:  # neither dp nor tp: the rest is data-parallel
            if (mesh.dp, mesh.pp, mesh.tp) != (P // pp, pp, 1):
                problems.append(f"build(pp={pp}) -> {mesh.dp}x{mesh.pp}x{mesh.tp}")
    with Mesh.build(COMM, tp=1, pp=None) as mesh:  # pp=None is no pipeline, never a guess
        if (mesh.dp, mesh.pp, mesh.tp) != (P, 1, 1):
            problems.append(f"build(tp=1, pp=None) -> {mesh.dp}x{mesh.pp}x{mesh.tp}")
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
    lambda: Mesh(COMM, P, 1, pp=0),
    lambda: Mesh(COMM, P, 1, pp=2.0),
    lambda: Mesh(COMM, P, 1, pp=True),
    lambda: Mesh(COMM, 1, 1, pp=P + 1),
    lambda: Mesh(COMM, P, 1, pp=2),
    lambda: Mesh.build(COMM, pp=P + 1),
    lambda: Mesh.build(COMM, pp=-1),
    lambda: Mesh.build(COMM, dp=P, pp=2),
    lambda: Mesh.build(COMM, dp=1, tp=1, pp=2 * P),
], ids=["product", "dp0", "tp-1", "float", "dp-not-divisor", "build-tp0", "build-both",
        "pp0", "pp-float", "pp-bool", "pp-product", "pp-times-dp", "build-pp-not-divisor",
        "build-pp-1", "build-dp-pp", "build-all-three"])
def test_wrong_grid_raises_the_same_error_everywhere(make):
    message = errors_everywhere(make)
    messages = COMM.allgather(message)
    assert message is not None and message.startswith("Mesh: ")
    assert all(m == messages[0] for m in messages)


@pytest.mark.mpi
def test_errors_come_before_any_message():
    """A bad grid is refused from the size and the degrees alone: no Split, no allgather."""
    from helpers import NoMessages
    for args, kwargs in (((P + 1, 1), {}), ((P, 1), dict(pp=0)), ((1, 1), dict(pp=P + 1))):
        message = errors_everywhere(lambda a=args, k=kwargs: Mesh(NoMessages(COMM), *a, **k))
        assert message is not None and message.startswith("Mesh: "), (args, kwargs)


@pytest.mark.mpi
@pytest.mark.skipif(P == 1, reason="one rank cannot disagree with itself")
def test_ranks_that_disagree_raise_the_same_error():
    dp, tp = (1, P) if RANK == 0 else (P, 1)  # each valid on its own
    message = errors_everywhere(lambda: Mesh(COMM, dp, tp))
    messages = COMM.allgather(message)
    assert message is not None and "disagree" in message
    assert all(m == messages[0] for m in messages)
    pp = P if RANK == 0 else 1  # the same dp x tp on every rank, but not the same pp
    message = errors_everywhere(lambda: Mesh(COMM, 1, P // pp, pp=pp))
    messages = COMM.allgather(message)
    assert message is not None and "disagree" in message
    assert all(m == messages[0] for m in messages)
