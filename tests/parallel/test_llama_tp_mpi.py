"""Tensor-parallel Llama on the ranks of MPI.COMM_WORLD against the same code on one process:
which heads every rank holds, logits within the derived bound of the serial run, deterministic
mode bit for bit the emulated split, replicated activations identical on every rank, greedy
tokens equal to the serial model's, the sharded KV cache equal to recomputation, and a split with
more ranks than query heads refused on every rank before any message."""
from helpers import NoMessages, all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref
from tp_cases import ALGORITHMS, LLAMA, check_against_serial, fits, greedy_without_cache

from mpipar.collectives import allreduce
from mpipar.measure import numerics
from mpipar.models import Llama, LlamaConfig, init_params
from mpipar.models import params as table

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
SMALL = ref.SMALL  # 9 query heads of 8, 3 key/value heads, 100 MLP units, vocabulary 101
pytestmark = pytest.mark.mpi  # every test here runs under mpirun


def params():
    return LLAMA.params(SMALL)


def tokens_for(batch=2, length=8, seed=1):
    return np.random.default_rng(seed).integers(0, SMALL.vocab_size, (batch, length))


def test_each_rank_holds_its_heads_and_only_its_share_of_the_bytes():
    fits(SMALL)
    model = Llama(SMALL, params(), COMM)
    s, problems = model.shards[0], []
    for unit in ("heads", "kv_heads", "hidden", "vocab"):
        if s[unit] != table.owned(SMALL, unit, P, RANK):
            problems.append(f"{unit} {s[unit]}")
    heads, kv = s["heads"], s["kv_heads"]
    if list(range(kv.start, kv.stop)) != sorted({h // 3 for h in range(heads.start, heads.stop)}):
        problems.append(f"query heads {heads} with key/value heads {kv}")
    # the ranks' bytes add up to the model once, plus the replicated gains on every other rank,
    # plus the key/value heads held by more than one rank
    held = COMM.allreduce(model.param_bytes())
    gains = (2 * SMALL.n_layer + 1) * 72 * 4
    owners = [table.owned(SMALL, "kv_heads", P, r) for r in range(P)]
    copies = sum(kv.stop - kv.start for kv in owners)  # key/value heads held, counting copies
    kv_bytes = SMALL.n_layer * 2 * 72 * 8 * 4  # k and v of one key/value head in every layer
    full = sum(v.nbytes for v in params().values())
    if held != full + (P - 1) * gains + (copies - 3) * kv_bytes:
        problems.append(f"{held} bytes held over all ranks")
    all_ranks_ok(problems)


def test_default_mode_is_within_the_bound_and_deterministic_mode_the_emulated_split():
    fits(SMALL)
    report = check_against_serial(COMM, SMALL, tokens_for(batch=3, length=10), family=LLAMA)
    if RANK == 0:
        print(f"p={P} Llama: {report}")


@pytest.mark.parametrize("mode", ["auto", *ALGORITHMS, "deterministic"])
def test_replicated_activations_are_identical_on_every_rank(mode):
    fits(SMALL)
    model = Llama(SMALL, params(), COMM, algorithm="auto" if mode == "deterministic" else mode,
                  deterministic=mode == "deterministic")
    hidden = []
    logits = model.forward(tokens_for(), hidden=hidden)
    assert len(hidden) == SMALL.n_layer
    for i, h in enumerate(hidden + [logits]):
        assert numerics.ranks_agree(COMM, h), f"block {i}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_deterministic_mode_equals_the_emulated_split(algorithm):
    fits(SMALL)
    tok = tokens_for()

    def run(comm, ways):  # the logits, the residual stream after every block, greedy tokens
        model = Llama(SMALL, params(), comm, algorithm, deterministic=True, ways=ways)
        hidden = []
        return [model.forward(tok, hidden=hidden), *hidden, model.generate(tok[:, :3], 6)]

    parallel, emulated = run(COMM, None), run(SELF, P)
    assert len(parallel) == len(emulated) == SMALL.n_layer + 2
    assert all(numerics.bitwise_equal(a, b) for a, b in zip(parallel, emulated))


@pytest.mark.parametrize("argmax", ["distributed", "gather"])
def test_greedy_tokens_equal_serial(argmax):
    fits(SMALL)
    parallel, serial = Llama(SMALL, params(), COMM), Llama(SMALL, params(), SELF)
    for seed, (batch, length) in enumerate([(1, 1), (2, 5), (3, 9)]):
        prompt = tokens_for(batch, length, seed)
        out = parallel.generate(prompt, 8, argmax=argmax)
        assert numerics.ranks_agree(COMM, out)
        expected = serial.generate(prompt, 8)
        # why equality is owed: every greedy choice wins by more than the logits' error bound
        logits = np.sort(ref.forward(SMALL, params(), expected[:, :-1])[:, length - 1:], axis=-1)
        margin = (logits[..., -1] - logits[..., -2]).min()
        assert margin > 2 * ref.error_bound(SMALL) * np.abs(logits).max(), margin
        assert np.array_equal(out, expected)


def test_the_sharded_kv_cache_gives_the_tokens_of_full_recomputation():
    fits(SMALL)
    model, prompt = Llama(SMALL, params(), COMM), tokens_for(3, 4, seed=2)
    cache = model.new_cache(3, 14)
    n_kv = model.shards[0]["kv_heads"].stop - model.shards[0]["kv_heads"].start
    assert all(k.shape == v.shape == (3, n_kv, 14, 8) for k, v in (layer[0] for layer in cache))
    out = model.generate(prompt, 10)
    assert numerics.ranks_agree(COMM, out)
    assert np.array_equal(out, greedy_without_cache(model, prompt, 10))


@pytest.mark.mpi(min_size=2)
def test_more_ranks_than_heads_fails_everywhere_before_any_message():
    heads = P - 1  # a model with one query head fewer than there are ranks
    config = LlamaConfig(vocab_size=11, n_ctx=8, n_embd=2 * heads, n_head=heads, n_kv_head=1, n_layer=1,
                         n_inner=4)
    with pytest.raises(ValueError, match=f"cannot split {heads} attention heads over {P} ranks: "
                                         f"use at most {heads} ranks") as info:
        Llama(config, init_params(config), NoMessages(COMM))
    with pytest.raises(ValueError, match="cannot split 9 attention heads over 10 ranks"):
        Llama(SMALL, params(), NoMessages(COMM), ways=10)
    assert COMM.allgather(str(info.value)) == [str(info.value)] * P
    assert allreduce(COMM, np.ones(2), algorithm="ring").tolist() == [P, P]  # nothing half-sent
