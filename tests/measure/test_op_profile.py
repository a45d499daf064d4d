"""The operation profile's hooks and the floor's replay, on one process."""
import numpy as np
import pytest

from mpipar.bench.floor import Replay, flop_count, fresh
from mpipar.measure import op_profile
from mpipar.measure.op_profile import KINDS, OpProfile, matmul, timed


@timed("norm")
def double(x):
    """Twice x."""
    return 2 * x


def test_hooks_are_the_plain_operations_when_off():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    assert not op_profile.profiling()
    assert np.array_equal(matmul(a, b), a @ b) and np.array_equal(double(a), 2 * a)
    assert double.__name__ == "double" and double.__doc__ == "Twice x."


def test_profiles_nest_and_count_each_call_once():
    a, w = np.ones((4, 3)), np.ones((3, 5))
    with OpProfile(persistent=[w]) as outer:
        matmul(a, w)
        with OpProfile() as inner:
            double(a)
            matmul(a, w.T.T)
    assert outer.calls == {"matmul": 2, "norm": 1} and inner.calls == {"matmul": 1, "norm": 1}
    assert inner.products == [] and len(outer.products) == 2
    (x, y), _ = outer.products
    assert x.array is None and x.shape == (4, 3)  # an activation: described, not kept
    assert y.array is w and y.nbytes == w.nbytes  # a parameter: kept, the same bytes
    table = outer.table(total=outer.wall_seconds, comm_seconds=0.0)
    assert list(table) == list(KINDS) and table["other"] >= 0
    assert sum(table.values()) == pytest.approx(outer.wall_seconds)


def test_fresh_operands_keep_shape_and_strides():
    rng = np.random.default_rng(0)
    base = np.zeros((2, 5, 3, 4, 8), np.float32)  # (B, T, 3, heads, d_h) as c_attn's q, k, v
    q = base.transpose(2, 0, 3, 1, 4)[0]  # a strided view, as attention's q
    op = op_profile.Operand.of(q, persistent=set())
    again = fresh(op, rng)
    assert again.shape == q.shape and again.strides == q.strides and again.dtype == q.dtype


def test_replay_runs_every_product_and_counts_its_work():
    w = np.ones((3, 5), np.float32)
    with OpProfile(persistent=[w]) as prof:
        matmul(np.ones((2, 4, 3), np.float32), w)
        matmul(np.ones((2, 4, 3), np.float32), w.T.T)
        matmul(np.ones(3, np.float32), w)
    replay = Replay(prof.products)
    assert replay() is None and len(replay.seconds_each()) == 3
    assert replay.pairs[0][1] is w and replay.pairs[0][0] is replay.pairs[1][0]  # one buffer per layout
    assert replay.flops == 2 * (2 * 4 * 3 * 5 + 2 * 4 * 3 * 5 + 3 * 5)
    assert replay.nbytes == 4 * (2 * (24 + 15) + 3 + 15)
    assert flop_count((7, 1, 2, 3), (5, 3, 4)) == 7 * 5 * 2 * 3 * 4
