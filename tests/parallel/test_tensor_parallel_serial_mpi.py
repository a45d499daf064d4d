"""Tensor-parallel GPT-2 against the same code on one process: replicated activations agree on
every rank, deterministic mode is the emulated split bit for bit, the default mode stays within
the derived bound of the serial run, and one forward moves the predicted bytes."""
from mpi4py import MPI
import numpy as np
import pytest
from tp_cases import ALGORITHMS, CONFIGS, SMALL, check_against_serial, fits, params_of, tokens_for

from mpipar.measure import numerics
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
pytestmark = pytest.mark.mpi  # every test here runs under mpirun


@CONFIGS
@pytest.mark.parametrize("mode", ["auto", *ALGORITHMS, "deterministic"])
def test_replicated_activations_are_identical_on_every_rank(config, mode):
    fits(config)
    model = GPT(config, params_of(config), COMM, algorithm="auto" if mode == "deterministic"
                else mode, deterministic=mode == "deterministic")
    hidden = []
    logits = model.forward(tokens_for(config), hidden=hidden)
    assert len(hidden) == config.n_layer
    for i, h in enumerate(hidden + [logits]):
        assert numerics.ranks_agree(COMM, h), f"block {i}"


@CONFIGS
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_deterministic_mode_equals_the_emulated_split(config, algorithm):
    fits(config)
    tok = tokens_for(config)
    runs = {}
    for name, comm, ways in (("parallel", COMM, None), ("emulated", SELF, P)):
        model = GPT(config, params_of(config), comm, algorithm, deterministic=True, ways=ways)
        hidden = []
        runs[name] = (model.forward(tok, hidden=hidden), hidden, model.generate(tok[:, :3], 5))
    (par, par_h, par_g), (emu, emu_h, emu_g) = runs["parallel"], runs["emulated"]
    assert numerics.bitwise_equal(par, emu)
    assert all(numerics.bitwise_equal(a, b) for a, b in zip(par_h, emu_h))
    assert np.array_equal(par_g, emu_g)


@CONFIGS
def test_default_mode_is_within_the_bound_of_serial(config):
    fits(config)
    report = check_against_serial(COMM, config, tokens_for(config, batch=3))
    if RANK == 0:
        print(f"p={P} {config.n_layer} layers: {report}")


@pytest.mark.parametrize("deterministic", [False, True])
def test_one_forward_moves_the_predicted_bytes(deterministic):
    fits(SMALL)
    (B, T), d, L, V = (2, 5), SMALL.n_embd, SMALL.n_layer, SMALL.vocab_size
    model = GPT(SMALL, params_of(SMALL), COMM, algorithm="ring", deterministic=deterministic)
    with CommLedger() as led:
        model.forward(tokens_for(SMALL, B, T))
    reduce = [r for r in led.records if r["op"] == "allreduce"]
    gather = [r for r in led.records if r["op"] == "allgather"]
    if P == 1:  # one process, nothing to send
        assert led.records == []
        return
    act = B * T * d * 4  # one float32 activation (B, T, d)
    if deterministic:  # every reduction gathers all p partials instead; then the logits
        assert reduce == []
        assert [r["nbytes"] for r in gather] == [P * act] * (2 * L + 1) + [B * T * V * 4]
        return
    # the embedding, then attention and MLP c_proj in every layer: 2 L + 1 allreduces
    assert [(r["nbytes"], r["count"]) for r in reduce] == [(act, B * T * d)] * (2 * L + 1)
    assert [r["nbytes"] for r in gather] == [B * T * V * 4]
    # a ring allreduce sends every one of the p blocks p-1 times in its reduce-scatter and
    # p-1 times in its allgather: 2 (p-1) n bytes over all ranks for n bytes of payload
    total = COMM.allreduce(sum(r["bytes_sent"] for r in reduce))
    assert total == (2 * L + 1) * 2 * (P - 1) * act
