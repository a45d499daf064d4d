"""Generation under tensor parallelism: greedy tokens equal the serial model's, and the
distributed argmax breaks ties like np.argmax while moving far fewer bytes than gathering
the logits."""
from mpi4py import MPI
import numpy as np
import pytest
from tp_cases import CONFIGS, SMALL, fits, params_of, tokens_for

from mpipar.measure import numerics
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT, GPTConfig, init_params

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P = COMM.Get_size()
pytestmark = pytest.mark.mpi  # every test here runs under mpirun


@CONFIGS
@pytest.mark.parametrize("argmax", ["distributed", "gather"])
def test_greedy_tokens_equal_serial(config, argmax):
    fits(config)
    params = params_of(config, plain=True)  # the presets as init_params(seed=0) makes them
    parallel, serial = GPT(config, params, COMM), GPT(config, params, SELF)
    for seed, (batch, length) in enumerate([(1, 1), (2, 5), (3, 9)]):
        prompt = tokens_for(config, batch, length, seed)
        out = parallel.generate(prompt, 8, argmax=argmax)
        assert numerics.ranks_agree(COMM, out)
        assert np.array_equal(out, serial.generate(prompt, 8))


def test_distributed_argmax_ties_go_to_the_lowest_id():
    config = GPTConfig(vocab_size=100, n_ctx=16, n_embd=24, n_head=6, n_layer=2)
    fits(config)
    params = dict(init_params(config, 0))
    # one-hot rows e_(v mod 7): every logit is one coordinate of ln_f(x), exactly, so ids
    # v, v+7, v+14, ... tie bit for bit, across every shard; np.argmax takes the lowest
    params["wte.weight"] = np.eye(24, dtype=np.float32)[np.arange(100) % 7]
    prompt = np.array([[50, 93, 20], [1, 2, 3]])
    out = GPT(config, params, COMM).generate(prompt, 6)
    assert np.array_equal(out, GPT(config, params, COMM).generate(prompt, 6, argmax="gather"))
    assert np.array_equal(out, GPT(config, params, SELF).generate(prompt, 6, argmax="gather"))
    assert (out[:, 3:] < 7).all()


def test_distributed_argmax_moves_far_fewer_bytes():
    fits(SMALL)
    model, B, steps, V = GPT(SMALL, params_of(SMALL), COMM), 2, 6, SMALL.vocab_size
    prompt = tokens_for(SMALL, B, 5)
    sent, gathered = {}, {}
    for mode in ("distributed", "gather"):
        with CommLedger() as led:
            gathered[mode] = model.generate(prompt, steps, argmax=mode)
        recs = [r for r in led.records if r["op"] == "allgather"]  # the LM head's only
        assert len(recs) == (steps if P > 1 else 0)
        sent[mode] = sum(r["bytes_sent"] for r in recs)
        # payload per step: gather moves B x V float32 logits = 4 B V bytes; the distributed
        # argmax moves p candidates (value, id) per sequence as float64 = 16 p B bytes
        assert all(r["nbytes"] == (16 * P * B if mode == "distributed" else 4 * B * V)
                   for r in recs)
    assert np.array_equal(gathered["distributed"], gathered["gather"])
    # every allgather algorithm sends a rank's share of the payload in proportion to it, so
    # the ratio is about 4 B V / (16 p B) = V / (4p) = 250 / p: 50 or more for p <= 5
    if P > 1:
        assert sent["gather"] >= 4 * sent["distributed"], sent
