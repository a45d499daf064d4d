"""The cost model's closed forms, checked by hand on small cases (no MPI needed)."""
import json
import math

import pytest

from mpipar.collectives import ALGORITHMS
from mpipar.measure.cost_model import CostModel

A, B, G = 1e-5, 1e-9, 1e-10
model = CostModel(A, B, G)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_power_of_two_formulas(p):
    n, lg = 1 << 20, math.log2(p)
    f = (p - 1) / p
    assert model.predict("allreduce", "ring", p, n) == pytest.approx(
        2 * (p - 1) * A + 2 * f * n * B + f * n * G)
    assert model.predict("allreduce", "recursive_doubling", p, n) == pytest.approx(lg * (A + n * B + n * G))
    assert model.predict("allreduce", "rabenseifner", p, n) == pytest.approx(
        2 * lg * A + 2 * f * n * B + f * n * G)
    assert model.predict("allgather", "ring", p, n) == pytest.approx((p - 1) * A + f * n * B)
    assert model.predict("allgather", "bruck", p, n) == pytest.approx(lg * A + f * n * B + n * G)
    assert model.predict("broadcast", "binomial", p, n) == pytest.approx(lg * (A + n * B))
    assert model.predict("reduce_scatter", "recursive_halving", p, n) == pytest.approx(
        lg * A + f * n * (B + G))


def test_hand_computed_value():
    # ring allreduce, p = 4, n = 1000 bytes: 6 alpha + 1500 beta + 750 gamma
    assert model.predict("allreduce", "ring", 4, 1000) == pytest.approx(6e-5 + 1.5e-6 + 7.5e-8)


@pytest.mark.parametrize("p", [2, 3, 5, 7, 12])
@pytest.mark.parametrize("op", list(ALGORITHMS))
def test_no_algorithm_beats_the_lower_bound(op, p):
    for n in (8, 4096, 1 << 24):
        bound = model.lower_bound(op, p, n)
        for alg in ALGORITHMS[op]:
            assert model.predict(op, alg, p, n) >= bound * (1 - 1e-12), (op, alg, p, n)


def test_non_power_of_two_pays_for_folding():
    n = 1 << 16
    assert model.predict("allreduce", "recursive_doubling", 3, n) > \
        model.predict("allreduce", "recursive_doubling", 2, n)
    # ring has no such penalty: its cost grows smoothly with p
    assert model.predict("allreduce", "ring", 3, n) < model.predict("allreduce", "ring", 4, n)


def test_auto_picks_latency_optimal_for_small_and_bandwidth_optimal_for_large():
    assert model.best("allreduce", 8, 8) == "recursive_doubling"
    for p in (2, 4, 5, 8, 12, 16):  # every message pays its latency: not ahead of doubling...
        assert model.best("allreduce", p, 8) != "recursive_multiplying"
    assert model.best("allreduce", 3, 8) == "recursive_multiplying"  # ...but for its fold
    for p, sent in ((16, 6), (12, 5), (7, 6), (8, 4)):  # sent: (k_j - 1) summed, 16 = 4 x 4
        assert model.predict("allreduce", "recursive_multiplying", p, 1000) == pytest.approx(
            sent * (A + 1000 * (B + G)))
    assert model.best("allreduce", 8, 1 << 26) in ("ring", "rabenseifner")
    assert model.best("allgather", 8, 8) in ("bruck", "recursive_doubling")
    assert model.best("broadcast", 16, 1 << 26) == "scatter_allgather"


def test_one_rank_costs_nothing_and_mpi_is_the_best_hand_written():
    assert model.predict("allreduce", "ring", 1, 1 << 20) == 0.0
    for op, algs in ALGORITHMS.items():
        best = min(model.predict(op, a, 6, 5000) for a in algs)
        assert model.predict(op, "mpi", 6, 5000) == best


def test_unknown_algorithm_is_a_clear_error():
    with pytest.raises(ValueError, match="no cost formula"):
        model.predict("allreduce", "bruck", 4, 100)


@pytest.mark.parametrize("p", [1, 2, 3, 8])
@pytest.mark.parametrize("op", ["send", "recv"])
def test_a_message_costs_alpha_plus_n_beta_on_any_p(op, p):
    for n in (0, 8, 1 << 20):
        assert model.predict(op, "p2p", p, n) == A + n * B  # even p = 1: a self-message is sent
        assert model.predict(op, "mpi", p, n) == A + n * B
        assert model.lower_bound(op, p, n) == n * B
        assert model.predict(op, "p2p", p, n) >= model.lower_bound(op, p, n)
    assert model.best(op, p, 1000) == "p2p"


def test_unknown_operation_or_message_algorithm_is_a_clear_error():
    with pytest.raises(ValueError, match="no cost formula for send algorithm 'ring'"):
        model.predict("send", "ring", 2, 100)
    with pytest.raises(ValueError, match=r"no cost formulas for 'gather'.*broadcast, send, recv"):
        model.predict("gather", "ring", 2, 100)


def test_o_is_paid_per_message_by_hand_written_algorithms_only():
    o = 3e-6
    with_o = CostModel(A, B, G, o=o)
    for op, algs in ALGORITHMS.items():
        for p in (2, 3, 8):
            n = 4096
            for alg in algs:  # o wherever the formula has alpha: once per message on the critical path
                assert with_o.predict(op, alg, p, n) == pytest.approx(
                    CostModel(A + o, B, G).predict(op, alg, p, n))
                assert with_o.predict(op, alg, p, n) > model.predict(op, alg, p, n)
            assert with_o.predict(op, "mpi", p, n) == model.predict(op, "mpi", p, n)
    # ring allreduce, p = 4: 6 messages on the critical path, each alpha + o
    assert with_o.predict("allreduce", "ring", 4, 1000) == pytest.approx(6 * (A + o) + 1.5e-6 + 7.5e-8)
    assert with_o.lower_bound("allreduce", 4, 1000) == model.lower_bound("allreduce", 4, 1000)


def test_o_moves_the_ring_recursive_doubling_crossover_up():
    def crossover(m, p=2):
        return next(n for n in (2 ** k for k in range(3, 30))
                    if m.best("allreduce", p, n) in ("ring", "rabenseifner"))
    assert crossover(CostModel(A, B, G, o=2 * A)) > crossover(model)


def test_describe_names_o_and_how_the_constants_were_measured():
    text = CostModel(A, B, G, o=2e-6, source="calibrated (contention: ...)").describe()
    assert "o = 2 us/message" in text and "contention" in text
    assert CostModel(**CostModel(o=1e-6).to_dict()) == CostModel(o=1e-6)


def test_kappa_prices_one_private_copy_per_collective_call():
    kappa = 2e-10
    with_k = CostModel(A, B, G, kappa=kappa)
    for op, algs in ALGORITHMS.items():
        for p in (2, 3, 8):
            n = 1 << 20
            for alg in (*algs, "mpi"):  # n bytes; n/p, the result, where x is only read
                reads = op == "reduce_scatter" and (alg == "mpi" or algs[alg].reads_input)
                want = model.predict(op, alg, p, n) + kappa * (n / p if reads else n)
                assert with_k.predict(op, alg, p, n) == pytest.approx(want)
            if not any(a.reads_input for a in algs.values()):  # the same copy for all of them
                assert with_k.best(op, p, n) == model.best(op, p, n)
    assert ALGORITHMS["reduce_scatter"]["ring"].reads_input  # its copy is the one priced less
    assert with_k.predict("send", "p2p", 2, 1000) == model.predict("send", "p2p", 2, 1000)  # no copy
    assert with_k.predict("allreduce", "ring", 1, 1000) == 0.0  # one rank: no call at all
    assert "kappa" in with_k.describe() and CostModel(**with_k.to_dict()) == with_k


def test_beta_alone_prices_the_algorithms_whose_messages_travel_one_at_a_time():
    alone = CostModel(A, B, G, beta_alone=B / 4)
    lone = {("allreduce", "naive"), ("allreduce", "tree"), ("allgather", "naive"),
            ("reduce_scatter", "naive"), ("broadcast", "naive"), ("broadcast", "binomial")}
    for op, algs in ALGORITHMS.items():
        for alg, entry in algs.items():
            assert entry.alone == ((op, alg) in lone)
            n, p = 1 << 20, 8
            want = CostModel(A, B / 4 if entry.alone else B, G).predict(op, alg, p, n)
            assert alone.predict(op, alg, p, n) == pytest.approx(want)
    assert CostModel(A, B, G, beta_alone=None).predict("allreduce", "tree", 8, 4096) == \
        model.predict("allreduce", "tree", 8, 4096)


def test_a_second_set_of_per_byte_constants_prices_large_payloads():
    large = CostModel(A, 3 * B, 2 * G, kappa=4e-10)
    two = CostModel(A, B, G, kappa=1e-10, large=large, large_from=1 << 20, small_up_to=1 << 18)
    for p in (2, 5, 16):
        for op, algs in ALGORITHMS.items():
            for alg in (*algs, "mpi"):
                small = CostModel(A, B, G, kappa=1e-10)
                assert two.predict(op, alg, p, 1 << 18) == small.predict(op, alg, p, 1 << 18)
                assert two.predict(op, alg, p, 1 << 22) == large.predict(op, alg, p, 1 << 22)
            assert two.best(op, p, 1 << 22) == large.best(op, p, 1 << 22)
    half = two.regime(1 << 19)  # halfway in lg n between the two measured sizes
    assert half.beta == pytest.approx(2 * B) and half.gamma == pytest.approx(1.5 * G)
    assert two.lower_bound("allreduce", 4, 1 << 22) == large.lower_bound("allreduce", 4, 1 << 22)
    assert "from 1 MiB" in two.describe()
    assert CostModel.from_dict(json.loads(json.dumps(two.to_dict()))) == two


def test_a_measured_per_call_overhead_is_added_to_its_algorithm_alone():
    call = (("allreduce", "ring", 5e-5), ("allreduce", "mpi", 1e-6))
    timed = CostModel(A, B, G, call=call)
    for alg in ALGORITHMS["allreduce"]:
        extra = 5e-5 if alg == "ring" else 0.0
        assert timed.predict("allreduce", alg, 4, 4096) == pytest.approx(
            model.predict("allreduce", alg, 4, 4096) + extra)
    assert timed.predict("allreduce", "mpi", 4, 4096) == pytest.approx(
        model.predict("allreduce", "mpi", 4, 4096) + 1e-6)
    assert timed.predict("allgather", "ring", 4, 4096) == model.predict("allgather", "ring", 4, 4096)
    slow = CostModel(A, B, G, call=(("allreduce", "rabenseifner", 1.0),))
    assert model.best("allreduce", 8, 1 << 20) == "rabenseifner" != slow.best("allreduce", 8, 1 << 20)
    assert "per call" in timed.describe()
    assert CostModel.from_dict(json.loads(json.dumps(timed.to_dict()))) == timed
    with pytest.raises(TypeError, match="call overheads"):
        CostModel.from_dict({**timed.to_dict(), "call": [["allreduce", "ring"]]})
