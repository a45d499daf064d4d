"""Sequence parallelism on the ranks of COMM_WORLD: deterministic mode is the emulated split bit
for bit; against tensor parallelism alone the loss and the sharded parameters' gradients are the
same bits and the replicated ones within the bound of sp_cases; the default mode's replicated
gradients are all-reduced within gamma_{p-1} of the blocks' exact sum; one forward moves the
all-reduce's bytes; each rank keeps 1/p of the replicated regions' activations. T = 7 positions:
uneven blocks at p = 2, 3, 4."""
from mpi4py import MPI
import numpy as np
import pytest
from sp_cases import (
    TINY,
    case,
    check_replicated_against_tp,
    gamma,
    replicated_names,
    sp_adjoint_gaps,
    term_scales,
)
from tp_cases import LLAMA, check_against_serial

from mpipar.collectives.blocks import split
from mpipar.measure import numerics
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT, init_params
from mpipar.parallel.tensor_parallel import TPGroup

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
PARAMS = init_params(TINY, 0)
pytestmark = pytest.mark.mpi  # every test here runs under mpirun


def test_the_operators_are_each_others_adjoints():
    assert sp_adjoint_gaps(TPGroup(COMM, sequence_parallel=True)) == {
        "gather_from_sp": 0.0, "reduce_scatter_to_sp": 0.0}


def test_deterministic_training_is_the_emulated_split_bit_for_bit():
    data = case()
    par = GPT(TINY, PARAMS, COMM, deterministic=True, sequence_parallel=True).loss_and_grads(*data)
    emu = GPT(TINY, PARAMS, SELF, ways=P, deterministic=True, sequence_parallel=True).loss_and_grads(*data)
    assert par[0] == emu[0] and numerics.bitwise_equal(par[1], emu[1])
    (mine,), shards = par[2], emu[2]
    assert sorted(mine) == sorted(shards[0])  # shard 0 also holds the replicated ones
    replicated = replicated_names(par[2])
    assert all(numerics.ranks_agree(COMM, mine[name]) for name in replicated)
    for name, g in mine.items():
        assert numerics.bitwise_equal(g, shards[0 if name in replicated else RANK][name]), name


def test_deterministic_training_equals_tensor_parallelism_within_the_bound(monkeypatch):
    data = case()
    (loss_tp, losses_tp, g_tp), scales = term_scales(
        GPT(TINY, PARAMS, COMM, deterministic=True), monkeypatch, data)
    loss, losses, g = GPT(TINY, PARAMS, COMM, deterministic=True,
                          sequence_parallel=True).loss_and_grads(*data)
    assert loss == loss_tp and numerics.bitwise_equal(losses, losses_tp)
    for name in set(g[0]) - set(replicated_names(g)):
        assert numerics.bitwise_equal(g[0][name], g_tp[0][name]), name
    worst = check_replicated_against_tp(g, g_tp, scales, data[0].size)
    if RANK == 0:
        print(f"p={P}: replicated gradients within {worst:.2f} u sum|t| of tensor parallelism's")


class Recorded(GPT):
    """GPT keeping each rank's own blocks' replicated gradients before they are summed."""

    def reduce_replicated(self, names, grads):
        self.blocks = getattr(self, "blocks", {})
        self.blocks.update({n: grads[0][n].copy() for n in names if n in replicated_names(grads)})
        super().reduce_replicated(names, grads)


def test_default_mode_sums_the_replicated_gradients_over_the_group():
    model = Recorded(TINY, PARAMS, COMM, algorithm="ring", sequence_parallel=True)
    _, _, (grads,) = model.loss_and_grads(*case())
    assert sorted(model.blocks) == replicated_names([grads])
    assert all(numerics.ranks_agree(COMM, grads[name]) for name in sorted(model.blocks))
    every = COMM.allgather(model.blocks)  # control data of a test: small
    for name in sorted(model.blocks):
        exact = sum(b[name].astype(np.float64) for b in every)
        scale = sum(np.abs(b[name].astype(np.float64)) for b in every)
        assert np.all(np.abs(grads[name] - exact) <= gamma(P - 1) * scale * (1 + 1e-9) + 1e-30), name


def test_default_mode_forward_within_the_bound_of_serial():
    report = check_against_serial(COMM, TINY, case()[0], sequence_parallel=True)
    if RANK == 0:
        print(f"p={P} GPT-2 sequence-parallel: {report}")


def test_llama_forward_within_the_bound_of_serial():
    from test_llama_tp_mpi import SMALL  # 9 query heads, 3 key/value heads
    if P > SMALL.n_head:
        pytest.skip("more ranks than heads")
    tok = np.random.default_rng(1).integers(0, SMALL.vocab_size, (2, 7))
    check_against_serial(COMM, SMALL, tok, family=LLAMA, sequence_parallel=True)


@pytest.mark.parametrize("T", [7, 4 * 3])
def test_one_forward_moves_the_allreduces_bytes(T):
    tok = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, T))
    sent = {}
    for sp in (False, True):
        with CommLedger() as led:
            GPT(TINY, PARAMS, COMM, algorithm="ring", sequence_parallel=sp).forward(tok)
        sent[sp] = {op: sum(r["bytes_sent"] for r in led.records if r["op"] == op)
                    for op in ("allreduce", "reduce_scatter", "allgather")}
    if P == 1:
        assert sent[True] == sent[False] == {"allreduce": 0, "reduce_scatter": 0, "allgather": 0}
        return
    logits = sent[False]["allgather"]  # the logit slices' gather, in both
    tp_total = sent[False]["allreduce"]
    sp_total = sent[True]["reduce_scatter"] + sent[True]["allgather"] - logits
    assert sent[True]["allreduce"] == 0 and tp_total > 0
    # every block of a ring travels p-1 times in each half: equal over all ranks for any T,
    # on every rank where the blocks of positions are the all-reduce's blocks (p divides T)
    assert COMM.allreduce(sp_total) == COMM.allreduce(tp_total)
    if T % P == 0:
        assert sp_total == tp_total


def test_each_rank_keeps_its_share_of_the_replicated_activations():
    inputs = case()[0]
    (B, T), d, L = inputs.shape, TINY.n_embd, TINY.n_layer
    tp, sp = (GPT(TINY, PARAMS, COMM, sequence_parallel=s) for s in (False, True))
    tp.loss_and_grads(*case())
    sp.loss_and_grads(*case())
    rows = split(T, P, RANK)
    assert tp.activation_bytes["replicated"] == (4 * L + 2) * B * T * d * 4
    assert sp.activation_bytes["replicated"] == (4 * L + 2) * B * (rows.stop - rows.start) * d * 4
    assert sp.activation_bytes["sharded"] == tp.activation_bytes["sharded"]


def test_generation_gives_tensor_parallelisms_tokens():
    prompt = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 7))
    want = GPT(TINY, PARAMS, COMM, deterministic=True).generate(prompt, 4)
    got = GPT(TINY, PARAMS, COMM, deterministic=True, sequence_parallel=True).generate(prompt, 4)
    assert np.array_equal(got, want)
