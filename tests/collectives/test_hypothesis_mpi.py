"""Property-based tests of the collectives: random shapes, axes, layouts, ops, dtypes, algorithms.

Every rank must draw the same examples and reach the same verdict, or a failing
example leaves the ranks in different places while hypothesis shrinks it and the
job hangs. So: derandomize=True and no database (the same examples everywhere),
no health checks (they depend on timing, which differs by rank), data generated
from (seed, rank), and each verdict combined over all ranks before asserting.
"""
import math

from hypothesis import HealthCheck, Phase, given, settings, strategies as st
import ml_dtypes
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allgather, allreduce, broadcast, reduce_scatter
from mpipar.collectives import ALGORITHMS

COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
DTYPES = ["float16", "float32", "float64", "int32", "int64", "bfloat16"]
OPS = ["sum", "prod", "max", "min"]
U = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
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
    v = v.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    return {"C": v, "transposed": v.T, "strided": v[..., ::2]}[case["layout"]]


def same_bits(a, b):
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def gamma(k, u):
    return k * u / (1 - k * u)


def reduction_errors(got, stack, dtype, op, like):
    """Problems with ``got`` as the reduction of ``stack`` (inputs on axis 0, exact widths).

    Bounds (derived in test_collectives_mpi.py): one combine has relative error
    u1 = u, or (1 + u16)(1 + u32) - 1 for 16-bit floats, which are combined in float32
    and rounded back; any order of p-1 combines is off by <= gamma_{p-1}(u1) sum|x_i|
    for a sum (Higham 2002, sec. 4.2; eq. 4.4 to first order) and by
    <= gamma_{p-1}(u1) |product| for a product. The float64 reference adds its own
    rounding (u64 for fsum, gamma_{p-1}(u64) for prod); 1 + 1e-12 covers the rounding
    of the bound itself.
    """
    p = stack.shape[0]
    if got.dtype != like.dtype or got.shape != stack.shape[1:]:
        return [f"got {got.dtype}{got.shape}, want {like.dtype}{stack.shape[1:]}"]
    if dtype.startswith("int") or op in ("max", "min"):
        exact = same_bits(got, getattr(np, op)(stack, axis=0).astype(like.dtype))
        return [] if exact else ["not exact"]
    u1 = U[dtype] if dtype in ("float32", "float64") else (1 + U[dtype]) * (1 + 2.0**-24) - 1
    cols, g64 = stack.reshape(p, -1).T, gamma(p - 1, 2.0**-53)
    if op == "sum":
        ref = np.array([math.fsum(c) for c in cols]).reshape(got.shape)
        scale = np.array([math.fsum(np.abs(c)) for c in cols]).reshape(got.shape)
        bound = (gamma(p - 1, u1) + 2.0**-53) * scale
    else:
        ref = np.prod(stack, axis=0)
        bound = (gamma(p - 1, u1) + g64) / (1 - g64) * np.abs(ref)
    err = np.abs(got.astype(np.float64) - ref)
    ok = np.all(err <= bound * (1 + 1e-12))  # 1e-12: the rounding of the bound itself
    return [] if ok else [f"error {np.max(err - bound):.3g} above the bound"]


def gather_inputs(x):
    """Every rank's input on a new axis 0, widened exactly to int64 or float64."""
    return np.stack(COMM.allgather(x.astype(np.int64 if x.dtype.kind == "i" else np.float64)))


def ranks_agree(y):
    mine = (y.shape, str(y.dtype), np.ascontiguousarray(y).tobytes())
    return [] if all(t == mine for t in COMM.allgather(mine)) else ["ranks disagree"]


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


@pytest.mark.mpi
@SAME_EVERYWHERE
@given(case=cases("allreduce"))
def test_allreduce_property(case):
    def run():
        x = make_input(case, case["shape"])
        got = allreduce(COMM, x, op=case["op"], algorithm=case["algorithm"])
        want = gather_inputs(x)
        return reduction_errors(got, want, case["dtype"], case["op"], x) + ranks_agree(got)
    verdict(case, run)


@pytest.mark.mpi
@SAME_EVERYWHERE
@given(case=cases("reduce_scatter"))
def test_reduce_scatter_property(case):
    def run():
        x = make_input(case, case["shape"])
        got = reduce_scatter(COMM, x, axis=case["axis"], op=case["op"], algorithm=case["algorithm"])
        mine = np.array_split(gather_inputs(x), P, axis=case["axis"] % x.ndim + 1)[RANK]
        return reduction_errors(got, mine, case["dtype"], case["op"], x)
    verdict(case, run)


@pytest.mark.mpi
@SAME_EVERYWHERE
@given(case=cases("allgather"))
def test_allgather_property(case):
    def run():
        shape = list(case["shape"])
        shape[case["axis"]] = case["lengths"][RANK]  # ranks contribute different lengths
        x = make_input(case, shape)
        got = allgather(COMM, x, axis=case["axis"], algorithm=case["algorithm"])
        want = np.concatenate(COMM.allgather(x), axis=case["axis"])
        return ranks_agree(got) + ([] if same_bits(got, want) else ["not the concatenation"])
    verdict(case, run)


@pytest.mark.mpi
@SAME_EVERYWHERE
@given(case=cases("broadcast"))
def test_broadcast_property(case):
    def run():
        x = make_input(case, case["shape"])  # different on every rank: only root's counts
        got = broadcast(COMM, x, root=case["root"], algorithm=case["algorithm"])
        return [] if same_bits(got, COMM.bcast(x, root=case["root"])) else ["not root's data"]
    verdict(case, run)
