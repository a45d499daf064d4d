"""Property-based tests of the collectives: random shapes, axes, layouts, ops, dtypes, algorithms.

Every rank must draw the same examples and reach the same verdict, or a failing
example leaves the ranks in different places while hypothesis shrinks it and the
job hangs. So: derandomize=True and no database (the same examples everywhere),
no health checks (they depend on timing, which differs by rank), data generated
from (seed, rank), and each verdict combined over all ranks before asserting.
The exact results and error bounds are those of collective_checks.py.
"""
from collective_checks import DTYPES, OPS, dt, expectation, gather_inputs, ranks_agree, reduction_errors
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import ALGORITHMS, allgather, allreduce, broadcast, reduce_scatter
from mpipar.measure.numerics import bitwise_equal

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
SAME_EVERYWHERE = settings(
    max_examples=25, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink])


@st.composite
def cases(draw, op):
    """One call: algorithm, array shape and layout, axis, reduction op, dtype, seed, root."""
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    return dict(
        algorithm=draw(st.sampled_from((*ALGORITHMS[op], "mpi", "auto"))),
        shape=shape,
        axis=axis,
        op=draw(st.sampled_from(OPS)),
        dtype=draw(st.sampled_from(DTYPES)),
        layout=draw(st.sampled_from(["C", "transposed", "strided"])),
        seed=draw(st.integers(0, 2**32 - 1)),
        root=draw(st.integers(0, P - 1)),
        lengths=draw(st.lists(st.integers(0, 4), min_size=P, max_size=P)),  # allgather rows
    )


def make_input(case, shape):
    """This rank's array of ``shape``, from (seed, rank), in the drawn memory layout."""
    rng = np.random.default_rng([case["seed"], RANK])
    dtype, op = case["dtype"], case["op"]
    full = list(shape[::-1]) if case["layout"] == "transposed" else list(shape)
    if case["layout"] == "strided":
        full[-1] *= 2
    if dtype.startswith("int"):  # small: no op overflows
        v = rng.choice([-2, -1, 1, 2], full) if op == "prod" else rng.integers(-99, 99, full)
    elif op == "prod":
        v = rng.uniform(0.5, 2.0, full) * rng.choice([-1.0, 1.0], full)
    else:
        v = rng.standard_normal(full)
    v = v.astype(dt(dtype))
    return {"C": v, "transposed": v.T, "strided": v[..., ::2]}[case["layout"]]


def verdict(case, run):
    """Run ``run()`` (which returns a list of problems) and fail on every rank alike."""
    try:
        errors = run()
    except Exception as e:  # noqa: BLE001 -- reported below on every rank, not raised here
        errors = [f"raised {e!r}"]
    drawn = COMM.allgather(repr(case))
    if any(d != drawn[0] for d in drawn):
        errors.append("ranks drew different examples")
    lines = [f"rank {r}: {e}" for r, errs in enumerate(COMM.allgather(errors)) for e in errs]
    assert not lines, f"{case}\n" + "\n".join(lines[:20])


def allreduce_problems(case):
    x = make_input(case, case["shape"])
    got = allreduce(COMM, x, op=case["op"], algorithm=case["algorithm"])
    want = expectation(gather_inputs(x), case["dtype"], case["op"])
    return reduction_errors("allreduce", got, want) + ranks_agree("allreduce", got)


def reduce_scatter_problems(case):
    x = make_input(case, case["shape"])
    got = reduce_scatter(COMM, x, axis=case["axis"], op=case["op"], algorithm=case["algorithm"])
    mine = np.array_split(gather_inputs(x), P, axis=case["axis"] % x.ndim + 1)[RANK]
    return reduction_errors("reduce_scatter", got, expectation(mine, case["dtype"], case["op"]))


def allgather_problems(case):
    shape = list(case["shape"])
    shape[case["axis"]] = case["lengths"][RANK]  # ranks contribute different lengths
    x = make_input(case, shape)
    got = allgather(COMM, x, axis=case["axis"], algorithm=case["algorithm"])
    want = np.concatenate(COMM.allgather(x), axis=case["axis"])
    return ranks_agree("allgather", got) + ([] if bitwise_equal(got, want) else ["not the concatenation"])


def broadcast_problems(case):
    x = make_input(case, case["shape"])  # different on every rank: only root's counts
    got = broadcast(COMM, x, root=case["root"], algorithm=case["algorithm"])
    return [] if bitwise_equal(got, COMM.bcast(x, root=case["root"])) else ["not root's data"]


PROBLEMS = {"allreduce": allreduce_problems, "reduce_scatter": reduce_scatter_problems,
            "allgather": allgather_problems, "broadcast": broadcast_problems}


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(PROBLEMS))
@SAME_EVERYWHERE
@given(data=st.data())
def test_property(name, data):
    """25 drawn calls of each collective: right, on every rank alike."""
    case = data.draw(cases(name), label="case")
    verdict(case, lambda: PROBLEMS[name](case))
