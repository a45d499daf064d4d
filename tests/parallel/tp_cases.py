"""What the tensor-parallel tests share: models, tokens and checks for GPT-2 and Llama on
MPI.COMM_WORLD, and the adjoint check of Megatron's operators.

Every rank builds identical parameters (init_params is seeded) and identical tokens, and
every skip depends only on the world size, so all ranks take the same path.
"""
from dataclasses import dataclass
import functools

from mpi4py import MPI
import numpy as np
import pytest
import reference_gpt2 as ref
import reference_llama as ref_llama

from mpipar.measure import numerics
from mpipar.models import GPT, PRESETS, GPTConfig, Llama, init_params

COMM, SELF = MPI.COMM_WORLD, MPI.COMM_SELF
P, RANK = COMM.Get_size(), COMM.Get_rank()
TINY, SMALL = PRESETS["tiny"], PRESETS["small"]
H12 = GPTConfig(vocab_size=53, n_ctx=16, n_embd=36, n_head=12, n_layer=2)  # 4d = 144
CONFIGS = pytest.mark.parametrize("config", [TINY, SMALL], ids=["tiny", "small"])
ALGORITHMS = ["ring", "recursive_doubling", "naive", "mpi"]


@functools.cache
def params_of(config, seed=0, plain=False):
    """init_params, with random biases and gains unless ``plain``."""
    params = init_params(config, seed)
    return params if plain else ref.every_parameter_matters(params, seed)


def tokens_for(config, batch=2, length=8, seed=1):
    return np.random.default_rng(seed).integers(0, config.vocab_size, (batch, length))


def fits(config, p=P):
    if p > config.n_head:  # depends only on the world size: the same skip on every rank
        pytest.skip(f"{config.n_head} heads cannot be split over {p} ranks")


@dataclass(frozen=True)
class Family:
    """A model class with its test parameters and its independent float64 oracle."""

    model: type        #: GPT or Llama
    params: object     #: config -> the test parameters
    exact: object      #: (config, params, tokens) -> the exact logits
    abs_sum: object    #: (config, params, tokens) -> sum |terms| of every logit's LM-head dot product
    bound: object      #: config -> the allowed error relative to the largest exact logit


def _llama_abs_sum(config, params, tok):
    x, head = ref_llama.final_hidden(config, params, tok)
    return np.abs(x) @ np.abs(head).T


GPT2 = Family(GPT, params_of, lambda c, params, tok: ref.forward(params, tok, c.n_head),
              lambda c, params, tok: ref.final_abs_sum(params, tok, c.n_head), ref.error_bound)
LLAMA = Family(Llama, functools.cache(ref_llama.lively), ref_llama.forward, _llama_abs_sum,
               ref_llama.error_bound)


def check_against_serial(comm, config, tok, family=GPT2, **options):
    """Default mode within the bound of the serial run; deterministic mode bitwise equal to
    the emulated split; replicated results identical on every rank. Returns the report.
    ``options`` (sequence_parallel=True) go to the parallel and the emulated model."""
    params, p, model = family.params(config), comm.Get_size(), family.model
    par = model(config, params, comm, **options).forward(tok)
    serial = model(config, params, SELF).forward(tok)
    exact = family.exact(config, params, tok)
    # the error bound derives the float32 error of a whole forward pass; serial and
    # parallel both lie within it of the exact logits, hence within twice it of each other
    scale = family.bound(config) * np.abs(exact).max()
    report = numerics.compare(par, serial, exact, family.abs_sum(config, params, tok))
    assert numerics.ranks_agree(comm, par)
    assert np.abs(par - exact).max() <= scale, report
    assert np.abs(par - serial).max() <= 2 * scale, report
    det = model(config, params, comm, deterministic=True, **options).forward(tok)
    emulated = model(config, params, SELF, ways=p, deterministic=True, **options).forward(tok)
    assert numerics.bitwise_equal(det, emulated)
    return report


def adjoint_gaps(tp, seed=0):
    """<op(x), y> - <x, op_backward(y)> for each of TPGroup's operators, summed over all shards
    of ``tp`` (on every rank of its communicator): exactly 0 when each backward is the adjoint
    (the conjugate) of its forward. Integer-valued float64 arrays keep every sum exact."""
    rng = np.random.default_rng(seed)  # the same draws on every rank: x and y are replicated
    x, y = (rng.integers(-9, 10, (2, 7)).astype(np.float64) for _ in range(2))
    per_shard = [rng.integers(-9, 10, (2, 7)).astype(np.float64) for _ in range(tp.ways)]
    ys = [per_shard[r] for r in tp.shard_ids]  # this process's shards' arrays

    def dot(a, b):
        return float(np.vdot(a, b))

    def over_shards(pairs):  # sum of <a_k, b_k> over every shard of the group
        return tp.comm.allreduce(sum(dot(a, b) for a, b in pairs))

    fx = tp.copy_to_tp(x)
    own, own_y = tp.scatter_to_tp(x), tp.scatter_to_tp(y)
    return {
        "copy_to_tp": over_shards((fx, yk) for yk in ys) - dot(x, tp.copy_to_tp_backward(ys)),
        "reduce_from_tp": dot(tp.reduce_from_tp(ys), y) - over_shards(
            (yk, tp.reduce_from_tp_backward(y)) for yk in ys),
        "gather_from_tp": dot(tp.gather_from_tp(own), y) - over_shards(
            zip(own, tp.gather_from_tp_backward(y))),
        "scatter_to_tp": over_shards(zip(own, own_y)) - dot(x, tp.scatter_to_tp_backward(own_y)),
    }


def greedy_without_cache(model, prompt, n):
    """Greedy tokens with no KV cache: the whole sequence runs through ``model`` again every step."""
    seq = np.asarray(prompt)
    for _ in range(n):
        seq = np.concatenate([seq, model.forward(seq)[:, -1].argmax(-1)[:, None]], axis=1)
    return seq
