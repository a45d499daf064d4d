"""Which rank holds what: the column-parallel shard of c_fc, uneven shards, and a split with
more ranks than heads refused before any message.

Why two references for a column-parallel layer: OpenBLAS picks its kernels and
blocking by matrix shape, so the column slice ``x @ W[:, cols]`` is not always
bitwise equal to ``(x @ W)[:, cols]`` -- the same dot products, summed in another
order. The emulated split (COMM_SELF, ways=p) runs the very matmul shapes of the p
ranks, so it reproduces each rank's columns bit for bit; the unsplit serial model
agrees only to within a rounding-error bound.
"""
from helpers import NoMessages, first_ranks
from mpi4py import MPI
import numpy as np
import pytest
import reference_gpt2 as ref
from tp_cases import CONFIGS, H12, SMALL, check_against_serial, fits, params_of, tokens_for

from mpipar.collectives import allreduce
from mpipar.collectives.blocks import split
from mpipar.measure import numerics
from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models import params as table
from mpipar.models.layers import mlp

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
pytestmark = pytest.mark.mpi  # every test here runs under mpirun; some ask for min_size


def gelu_inputs(model, i, x):
    """c_fc's output -- GELU's input -- of every shard of ``model``'s MLP i for the input x."""
    return mlp(model.tp, model.shards, f"h.{i}.mlp.", x)[1].pre


@CONFIGS
def test_column_parallel_c_fc_is_the_emulated_shard_bitwise(config):
    fits(config)
    params, d = params_of(config), config.n_embd
    model = GPT(config, params, COMM)
    emulated, serial = GPT(config, params, SELF, ways=P), GPT(config, params, SELF)
    cols = table.owned(config, "hidden", P, RANK)
    x, worst_ulp = model.embed(model.check_tokens(tokens_for(config))), 0.0
    for i in range(config.n_layer):
        x, saved = model.block(i, x)
        m_in, mine = saved.mlp.x, saved.mlp.pre[0]  # the same input for all three
        assert mine.shape[-1] == cols.stop - cols.start
        assert numerics.bitwise_equal(mine, gelu_inputs(emulated, i, m_in)[RANK]), f"layer {i}"
        theirs = gelu_inputs(serial, i, m_in)[0][..., cols]
        w, b = (params[f"h.{i}.mlp.c_fc.{n}"].astype(np.float64) for n in ("weight", "bias"))
        abs_sum = np.abs(m_in) @ np.abs(w[:, cols]) + np.abs(b[cols])
        # each is x.w + b, d + 1 terms, within gamma_{d+1} * abs_sum of the exact value
        # (Higham 2002, sec. 3.1), so the two differ by at most 2 (d + 1) u * abs_sum ...
        assert numerics.normalized_error(mine, theirs, abs_sum) <= 2 * (d + 1)
        # ... which is at most 2 (d + 1) abs_sum / |y| ULPs (an ULP of y is >= u |y|): small
        # where the sum is well conditioned (abs_sum <= 4 |y|), unbounded near cancellation
        ulps = numerics.ulp_distance(mine, theirs)
        assert ulps[abs_sum <= 4 * np.abs(theirs)].max(initial=0) <= 8 * (d + 1) + 1
        worst_ulp = max(worst_ulp, float(ulps.max()))
    print(f"rank {RANK}: c_fc vs the unsplit matmul: max {worst_ulp:.0f} ULP")


@pytest.mark.mpi(min_size=5)
def test_twelve_heads_on_five_ranks():
    with first_ranks(5) as five:
        if five == MPI.COMM_NULL:
            return
        shard = GPT(H12, params_of(H12), five).shards[0]
        r = five.Get_rank()
        # 12 heads = 3+3+2+2+2; vocab 53 = 11*3+10*2; MLP 144 = 25+25+32+31+31, balancing a
        # block's weights: a head holds 4*36*3 + 9 = 441 numbers, a hidden unit 2*36 + 1 = 73,
        # so ranks hold 1323 + 25*73 = 3148, 882 + 32*73 = 3218 and 882 + 31*73 = 3145
        assert shard["heads"].stop - shard["heads"].start == (3 if r < 2 else 2)
        assert shard["h.0.mlp.c_fc.weight"].shape == (36, [25, 25, 32, 31, 31][r])
        assert shard["wte.weight"].shape == (11 if r < 3 else 10, 36)
        check_against_serial(five, H12, tokens_for(H12, length=10))


@pytest.mark.mpi(min_size=3)
def test_vocab_of_1000_on_three_ranks():
    with first_ranks(3) as three:
        if three == MPI.COMM_NULL:
            return
        model = GPT(SMALL, params_of(SMALL), three)
        assert model.shards[0]["vocab"] == split(1000, 3, three.Get_rank())  # 334, 333, 333
        check_against_serial(three, SMALL, tokens_for(SMALL))
        prompt = tokens_for(SMALL, 2, 4)
        assert np.array_equal(model.generate(prompt, 6),
                              GPT(SMALL, params_of(SMALL), SELF).generate(prompt, 6))


@pytest.mark.parametrize("config,ways", [(H12, 5), (SMALL, 3), (SMALL, 5)])
def test_uneven_splits_emulated_at_any_world_size(config, ways):
    params, tok = params_of(config), tokens_for(config)
    exact = ref.forward(params, tok, config.n_head)
    serial = GPT(config, params, SELF).forward(tok)
    emulated = GPT(config, params, SELF, ways=ways)
    sizes = {(s["heads"].stop - s["heads"].start, s["h.0.mlp.c_fc.weight"].shape[1],
              s["wte.weight"].shape[0]) for s in emulated.shards}
    assert len(sizes) > 1  # uneven shards: the heads, the MLP width or the vocabulary differ
    scale = ref.error_bound(config) * np.abs(exact).max()  # as in check_against_serial
    assert np.abs(emulated.forward(tok) - serial).max() <= 2 * scale
    runs = [GPT(config, params, SELF, ways=ways, deterministic=True).forward(tok)
            for _ in range(2)]
    assert numerics.bitwise_equal(runs[0], runs[1])


@pytest.mark.mpi(min_size=3)
def test_more_ranks_than_heads_fails_everywhere_before_any_message():
    config = GPTConfig(vocab_size=11, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    with pytest.raises(ValueError, match=f"cannot split 2 attention heads over {P} ranks: "
                                         "use at most 2 ranks") as info:
        GPT(config, init_params(config), NoMessages(COMM))
    assert COMM.allgather(str(info.value)) == [str(info.value)] * P
    assert allreduce(COMM, np.ones(2), algorithm="ring").tolist() == [P, P]  # nothing half-sent
