"""Tensor-parallel GPT-2 on the ranks of MPI.COMM_WORLD against the serial and emulated runs.

Every rank builds identical parameters (init_params is seeded) and identical tokens, and
every skip depends only on the world size, so all ranks take the same path.

Why two references for a column-parallel layer: OpenBLAS picks its kernels and
blocking by matrix shape, so the column slice ``x @ W[:, cols]`` is not always
bitwise equal to ``(x @ W)[:, cols]`` -- the same dot products, summed in another
order. The emulated split (COMM_SELF, ways=p) runs the very matmul shapes of the p
ranks, so it reproduces each rank's columns bit for bit; the unsplit serial model
agrees only to within a rounding-error bound.
"""
import contextlib
import functools

from mpi4py import MPI
import numpy as np
import pytest

import mpipar.models.gpt2
from mpipar.measure import numerics
from mpipar.collectives import allreduce
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT, GPTConfig, PRESETS, init_params
from mpipar.collectives.blocks import split
import reference_gpt2 as ref

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
TINY, SMALL = PRESETS["tiny"], PRESETS["small"]
H12 = GPTConfig(vocab_size=53, n_ctx=16, n_embd=36, n_head=12, n_layer=2)  # 4d = 144
CONFIGS = pytest.mark.parametrize("config", [TINY, SMALL], ids=["tiny", "small"])
ALGORITHMS = ["ring", "recursive_doubling", "naive", "mpi"]
pytestmark = pytest.mark.mpi  # every test here runs under mpirun; some ask for min_size


@functools.lru_cache(maxsize=None)
def params_of(config, seed=0, plain=False):
    """init_params, with random biases and gains unless ``plain``."""
    params = init_params(config, seed)
    return params if plain else ref.every_parameter_matters(params, seed)


def tokens_for(config, batch=2, length=8, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length))


def fits(config, p=P):
    if p > config.n_head:  # depends only on the world size: the same skip on every rank
        pytest.skip(f"{config.n_head} heads cannot be split over {p} ranks")


@contextlib.contextmanager
def first_ranks(k):
    """A communicator of ranks 0..k-1 (COMM_NULL on the others)."""
    sub = COMM.Split(0 if RANK < k else MPI.UNDEFINED, RANK)
    try:
        yield sub
    finally:
        if sub != MPI.COMM_NULL:
            sub.Free()


@contextlib.contextmanager
def gelu_inputs():
    """Record every GELU input -- the c_fc output of each shard -- while open."""
    seen, real = [], mpipar.models.gpt2.gelu
    mpipar.models.gpt2.gelu = lambda x: (seen.append(x.copy()), real(x))[1]
    try:
        yield seen
    finally:
        mpipar.models.gpt2.gelu = real


def check_against_serial(comm, config, tok):
    """Default mode within the bound of the serial run; deterministic mode bitwise equal to
    the emulated split; replicated results identical on every rank. Returns the report."""
    params, p = params_of(config), comm.Get_size()
    par = GPT(config, params, comm).forward(tok)
    serial = GPT(config, params, SELF).forward(tok)
    exact = ref.forward(params, tok, config.n_head)
    # ref.error_bound derives the float32 error of a whole forward pass; serial and
    # parallel both lie within it of the exact logits, hence within twice it of each other
    scale = ref.error_bound(config) * np.abs(exact).max()
    report = numerics.compare(par, serial, exact, ref.final_abs_sum(params, tok, config.n_head))
    assert numerics.ranks_agree(comm, par)
    assert np.abs(par - exact).max() <= scale, report
    assert np.abs(par - serial).max() <= 2 * scale, report
    det = GPT(config, params, comm, deterministic=True).forward(tok)
    emulated = GPT(config, params, SELF, ways=p, deterministic=True).forward(tok)
    assert numerics.bitwise_equal(det, emulated)
    return report


# --- (a) column-parallel c_fc ------------------------------------------------------------------

@CONFIGS
def test_column_parallel_c_fc_is_the_emulated_shard_bitwise(config):
    fits(config)
    params, tok, d = params_of(config), tokens_for(config), config.n_embd
    model = GPT(config, params, COMM)
    mlp_inputs, real_mlp = [], model.mlp
    model.mlp = lambda i, x, saved=None: (mlp_inputs.append(x), real_mlp(i, x, saved))[1]
    with gelu_inputs() as mine:
        model.forward(tok)
    emulated, serial = GPT(config, params, SELF, ways=P), GPT(config, params, SELF)
    cols = split(4 * d, P, RANK)
    assert mine[0].shape[-1] == cols.stop - cols.start
    worst_ulp = 0.0
    for i, x in enumerate(mlp_inputs):  # the same input x for all three
        with gelu_inputs() as shards:
            emulated.mlp(i, x)
        assert numerics.bitwise_equal(mine[i], shards[RANK]), f"layer {i}"
        with gelu_inputs() as whole:
            serial.mlp(i, x)
        theirs = whole[0][..., cols]
        w, b = (params[f"h.{i}.mlp.c_fc.{n}"].astype(np.float64) for n in ("weight", "bias"))
        abs_sum = np.abs(x) @ np.abs(w[:, cols]) + np.abs(b[cols])
        # each is x.w + b, d + 1 terms, within gamma_{d+1} * abs_sum of the exact value
        # (Higham 2002, sec. 3.1), so the two differ by at most 2 (d + 1) u * abs_sum ...
        assert numerics.normalized_error(mine[i], theirs, abs_sum) <= 2 * (d + 1)
        # ... which is at most 2 (d + 1) abs_sum / |y| ULPs (an ULP of y is >= u |y|): small
        # where the sum is well conditioned (abs_sum <= 4 |y|), unbounded near cancellation
        ulps = numerics.ulp_distance(mine[i], theirs)
        assert ulps[abs_sum <= 4 * np.abs(theirs)].max(initial=0) <= 8 * (d + 1) + 1
        worst_ulp = max(worst_ulp, float(ulps.max()))
    print(f"rank {RANK}: c_fc vs the unsplit matmul: max {worst_ulp:.0f} ULP")


# --- (b) replicated activations agree ----------------------------------------------------------

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


# --- (c) deterministic mode is the emulated split, bit for bit ---------------------------------

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


# --- (d) default mode: bounded logits, identical greedy tokens ---------------------------------

@CONFIGS
def test_default_mode_is_within_the_bound_of_serial(config):
    fits(config)
    report = check_against_serial(COMM, config, tokens_for(config, batch=3))
    if RANK == 0:
        print(f"p={P} {config.n_layer} layers: {report}")


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


# --- (e) uneven shards -------------------------------------------------------------------------

@pytest.mark.mpi(min_size=5)
def test_twelve_heads_on_five_ranks():
    with first_ranks(5) as five:
        if five == MPI.COMM_NULL:
            return
        shard = GPT(H12, params_of(H12), five).shards[0]
        r = five.Get_rank()
        # 12 heads = 3+3+2+2+2; MLP 144 = 29*4+28; vocab 53 = 11*3+10*2
        assert shard["heads"].stop - shard["heads"].start == (3 if r < 2 else 2)
        assert shard["h.0.mlp.c_fc.weight"].shape == (36, 29 if r < 4 else 28)
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
    assert len(sizes) > 1  # uneven shards: heads, MLP width or vocabulary differ by one
    scale = ref.error_bound(config) * np.abs(exact).max()  # as in check_against_serial
    assert np.abs(emulated.forward(tok) - serial).max() <= 2 * scale
    runs = [GPT(config, params, SELF, ways=ways, deterministic=True).forward(tok)
            for _ in range(2)]
    assert numerics.bitwise_equal(runs[0], runs[1])


# --- (f) more ranks than heads -----------------------------------------------------------------

class NoMessages:
    """A communicator that may only tell its size and rank: any other use would be a message."""

    def __init__(self, comm):
        self.Get_size, self.Get_rank = comm.Get_size, comm.Get_rank

    def __getattr__(self, name):  # called only for names not set in __init__
        raise AssertionError(f"GPT used comm.{name} before rejecting the split")


@pytest.mark.mpi(min_size=3)
def test_more_ranks_than_heads_fails_everywhere_before_any_message():
    config = GPTConfig(vocab_size=11, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    with pytest.raises(ValueError, match=f"cannot split 2 attention heads over {P} ranks: "
                                         "use at most 2 ranks") as info:
        GPT(config, init_params(config), NoMessages(COMM))
    assert COMM.allgather(str(info.value)) == [str(info.value)] * P
    assert allreduce(COMM, np.ones(2), algorithm="ring").tolist() == [P, P]  # nothing half-sent


# --- (g) distributed argmax --------------------------------------------------------------------

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


# --- (h) the bytes of one forward --------------------------------------------------------------

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
