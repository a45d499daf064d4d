"""Sequence parallelism emulated on one process (COMM_SELF, ways = p): the operators are
conjugate, the loss and the sharded parameters' gradients are tensor parallelism's bit for bit,
the replicated parameters' gradients within the summation bound of sp_cases, and the options
that cannot work are refused."""
from mpi4py import MPI
import numpy as np
import pytest
from sp_cases import TINY, case, check_replicated_against_tp, replicated_names, sp_adjoint_gaps, term_scales

from mpipar.measure.memory import held_bytes
from mpipar.models import GPT, Llama, LlamaConfig, init_params
from mpipar.parallel.tensor_parallel import TPGroup
from mpipar.train import build_parser, settings_from

SELF = MPI.COMM_SELF
PARAMS = init_params(TINY, 0)


@pytest.mark.parametrize("ways", [1, 2, 3, 4])
def test_the_operators_are_each_others_adjoints(ways):
    assert sp_adjoint_gaps(TPGroup(SELF, ways=ways, sequence_parallel=True)) == {
        "gather_from_sp": 0.0, "reduce_scatter_to_sp": 0.0}


@pytest.mark.parametrize("ways", [1, 2, 3, 4])
def test_training_equals_tensor_parallelism_but_for_the_replicated_sums(ways, monkeypatch):
    data = case()
    (loss_tp, losses_tp, g_tp), scales = term_scales(GPT(TINY, PARAMS, SELF, ways=ways), monkeypatch, data)
    loss, losses, g = GPT(TINY, PARAMS, SELF, ways=ways, sequence_parallel=True).loss_and_grads(*data)
    assert loss == loss_tp and np.array_equal(losses, losses_tp)
    assert [sorted(d) for d in g] == [sorted(d) for d in g_tp]  # replicated ones in grads[0] only
    for k in range(ways):
        for name in set(g[k]) - set(replicated_names(g)):
            assert np.array_equal(g[k][name], g_tp[k][name]), name
    check_replicated_against_tp(g, g_tp, scales, data[0].size)


def test_without_the_sum_over_blocks_the_gradients_are_wrong(monkeypatch):
    data = case()
    (_, _, g_tp), scales = term_scales(GPT(TINY, PARAMS, SELF, ways=3), monkeypatch, data)
    model = GPT(TINY, PARAMS, SELF, ways=3, sequence_parallel=True)
    # keep only shard 0's block: what every rank would hold without the all-reduce
    monkeypatch.setattr(model.tp, "reduce_from_tp", lambda parts: parts[0].copy())
    with pytest.raises(AssertionError):
        check_replicated_against_tp(model.loss_and_grads(*data)[2], g_tp, scales, data[0].size)


def test_fewer_positions_than_shards_leaves_some_blocks_empty():
    tok = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 2))
    tp = GPT(TINY, PARAMS, SELF, ways=4).forward(tok)
    assert np.array_equal(GPT(TINY, PARAMS, SELF, ways=4, sequence_parallel=True).forward(tok), tp)


def test_llama_forward_equals_tensor_parallelism():
    config = LlamaConfig(vocab_size=50, n_ctx=16, n_embd=24, n_head=6, n_kv_head=2, n_layer=2,
                         n_inner=40)
    params, tok = init_params(config, 0), np.random.default_rng(0).integers(0, 50, (2, 7))
    want = Llama(config, params, SELF, ways=3).forward(tok)
    assert np.array_equal(Llama(config, params, SELF, ways=3, sequence_parallel=True).forward(tok), want)


def test_generation_prefills_in_blocks_and_decodes_with_tensor_parallelism():
    prompt = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 7))
    model = GPT(TINY, PARAMS, SELF, ways=3, sequence_parallel=True)
    out = model.generate(prompt, 4)
    assert np.array_equal(out, GPT(TINY, PARAMS, SELF, ways=3).generate(prompt, 4))
    assert model.tp.sequence_parallel  # back on after generation


def test_saved_activations_of_the_replicated_regions_are_counted_once_per_block():
    model = GPT(TINY, PARAMS, SELF, sequence_parallel=True)
    inputs, targets, weights = case()
    model.loss_and_grads(inputs, targets, weights)
    (B, T), d, L = inputs.shape, TINY.n_embd, TINY.n_layer
    # per block its input, the residual between its halves, ln_1's and ln_2's outputs; the head's
    # input and ln_f's output: 4 L + 2 float32 arrays of (B, T, d)
    assert model.activation_bytes["replicated"] == (4 * L + 2) * B * T * d * 4


def test_held_bytes_counts_a_view_as_the_array_it_views():
    a = np.zeros((4, 6), np.float32)
    assert held_bytes(a, a[1:], [a.T, (a.reshape(-1),)], {"b": np.ones(3)}) == 96 + 24


def test_sixteen_bit_wires_are_refused():
    with pytest.raises(ValueError, match="sequence parallelism sends float32"):
        GPT(TINY, PARAMS, SELF, algorithm="ring", comm_dtype="bfloat16", sequence_parallel=True)


@pytest.mark.parametrize("argv, message", [
    (["--sp"], "--sp needs --tp"),
    (["--sp", "--tp", "1", "--pp", "2"], "--sp does not run with --pp")])
def test_train_refuses_sp_without_tp_or_with_pp(argv, message):
    with pytest.raises(ValueError, match=message):
        settings_from(build_parser().parse_args(["--preset", "tiny", *argv]), 2)
