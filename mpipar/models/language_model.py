"""What every language model of mpipar shares: construction over a tensor-parallel group,
token checks, and generation with a KV cache.

A model (``gpt2.GPT``, ``llama.Llama``) subclasses ``LanguageModel`` and supplies
``logit_parts(x)`` (each shard's logits) and ``decode(tokens, cache, pos0)`` -- the final
hidden states of new positions, the earlier ones read from the cache (see ``kv_cache``).
Every check happens before any message and gives the same verdict on every rank.

Greedy decoding picks the most likely token without gathering the logits: each
shard offers its best candidate and only those cross between ranks.
"""
import numpy as np

from ..collectives import ALGORITHMS, lowp
from ..parallel.tensor_parallel import TPGroup
from . import kv_cache
from .attention import softmax
from .params import check_params, shard_params
from .sources import as_source


class Subset:
    """A source of shards that names only some parameters of another (``sources.as_source``)."""

    def __init__(self, source, names):
        self.source, self.kept = source, set(names)

    def names(self):
        return [name for name in self.source.names() if name in self.kept]

    def shape(self, name):
        return self.source.shape(name)

    def take(self, name, axis=None, index=None):
        return self.source.take(name, axis, index)


def _problem(config, p, ways, algorithm, deterministic, comm_dtype, rounding, sequence_parallel):
    """What makes this model unbuildable, or None -- decided before any message."""
    problem = config.problems()
    if problem is not None:  # the configuration's own problem first; nothing below may hide it
        return problem
    if algorithm not in (*ALGORITHMS["allreduce"], "mpi", "auto"):
        problem = (f"unknown allreduce algorithm {algorithm!r}; choose from "
                   f"{', '.join((*ALGORITHMS['allreduce'], 'mpi', 'auto'))}")
    elif not isinstance(p, (int, np.integer)) or p < 1:
        problem = f"ways must be a positive number of shards, not {ways!r}"
    elif comm_dtype != "float32" or rounding not in ("per_hop", "none"):
        problem = lowp.problems(comm_dtype, rounding, algorithm)
        if problem is None and deterministic:
            problem = "deterministic mode reduces in float32: drop the 16-bit comm dtype"
    if problem is None and sequence_parallel and comm_dtype != "float32":
        problem = "sequence parallelism sends float32 blocks: drop the 16-bit comm dtype"
    if problem is None and p > config.n_head:
        problem = (f"cannot split {config.n_head} attention heads over {p} ranks: "
                   f"use at most {config.n_head} ranks")
    return problem


class LanguageModel:
    """A language model split over a tensor-parallel group: construction, token checks, the
    byte count, and ``generate`` (greedy or sampled) with its distributed argmax and KV cache.

    ``algorithm`` is the allreduce algorithm of every row-parallel reduction;
    ``deterministic`` reduces partial sums in fixed rank order, so a serial run emulating the
    same split (``comm`` of size 1, ``ways`` = p) gives identical bits; ``comm_dtype`` float16
    or bfloat16 sends every reduction and logit gather in 16 bits, rounded ``per_hop`` or
    ``once`` (mpipar.collectives.lowp). ``params``: a dict of full arrays, or a source that
    hands out only the slices a shard owns (``sources.ArraySource``). ``names``: keep only
    these parameters (a pipeline stage's layers; see mpipar.parallel.pipeline_stage).
    ``sequence_parallel``: the norms and residual stream hold 1/p of the positions per shard
    (Korthikanti et al. 2022; see mpipar.parallel.tensor_parallel): the forward, training and
    generation's prefill; its decoding steps run with tensor parallelism alone.
    """

    def __init__(self, config, params, comm=None, algorithm="auto", deterministic=False, ways=None,
                 comm_dtype="float32", rounding="per_hop", names=None, sequence_parallel=False):
        if comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        p = comm.Get_size() if ways is None else ways
        problem = _problem(config, p, ways, algorithm, deterministic, comm_dtype, rounding,
                           sequence_parallel)
        if problem:
            raise ValueError(problem)  # the same verdict on every rank, before any message
        check_params(config, params)
        self.config = config
        self.tp = TPGroup(comm, ways=p, algorithm=algorithm, deterministic=deterministic,
                          comm_dtype=comm_dtype, rounding=rounding,
                          sequence_parallel=sequence_parallel)
        self.dtype = np.dtype(config.dtype)
        if names is not None:
            params = Subset(as_source(params), names)
        #: one dict of parameters per shard this process computes (see params.shard_params)
        self.shards = [shard_params(config, params, r, p) for r in self.tp.shard_ids]

    # --- bookkeeping -----------------------------------------------------------------------

    def check_tokens(self, tokens, extra=0):
        """``tokens`` as a (batch, time) int64 array, or a ValueError saying what is wrong."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be a (batch, time) integer array, got {tokens.dtype} "
                             f"{tokens.shape}")
        if tokens.shape[1] + extra > self.config.n_ctx or tokens.shape[1] < 1:
            raise ValueError(f"{tokens.shape[1]} + {extra} positions do not fit the context of "
                             f"{self.config.n_ctx}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        return tokens.astype(np.int64)

    def param_bytes(self):
        """Bytes of parameters this process holds (replicated ones counted once)."""
        seen, total = set(), 0
        for s in self.shards:
            for v in s.values():
                if isinstance(v, np.ndarray) and id(v) not in seen:
                    seen.add(id(v))
                    total += v.nbytes
        return total

    def new_cache(self, batch, length):
        """Per layer and shard, (K, V) buffers of (B, own key/value heads, length, head_dim)."""
        heads = [s["kv_heads"].stop - s["kv_heads"].start for s in self.shards]
        return kv_cache.new_cache(self.config.n_layer, batch, length, heads, self.config.head_dim,
                                  self.dtype)

    def argmax_last(self, x):
        """Greedy next tokens from the last position without gathering the logits.

        Each shard finds its best (logit, token id); the p candidates per sequence
        -- 2 numbers each instead of vocab/p logits -- are gathered and the largest
        wins, ties going to the lowest id, exactly as np.argmax on the full row.
        """
        cands = []
        for s, logits in zip(self.shards, self.logit_parts(x[:, -1:])):
            best = logits[:, 0].argmax(-1)
            value = np.take_along_axis(logits[:, 0], best[:, None], -1)[:, 0]
            cands.append(np.stack([value.astype(np.float64), best + s["vocab"].start], -1)[None])
        every = self.tp.gather_from_tp(cands, axis=0, exact=True)  # (p, B, 2), in id order
        winner = every[:, :, 0].argmax(0)
        return every[winner, np.arange(every.shape[1]), 1].astype(np.int64)

    def generate(self, prompt, max_new_tokens, temperature=0.0, seed=0, argmax="distributed",
                 on_token=None):
        """Extend ``prompt`` (B, T) by ``max_new_tokens``: greedy for temperature 0, else
        sampled with a generator seeded identically on every rank. A KV cache keeps each
        shard's keys and values, so every step computes one new position.

        ``argmax="gather"`` gathers the full logits for greedy steps instead (to compare bytes).
        ``on_token(new)`` is called with each step's (B,) new token ids; if it returns True,
        generation stops there (every rank holds the same tokens, so every rank stops alike).
        With sequence parallelism the prompt's pass (prefill) splits its positions; each
        decoding step computes one position (T = 1, nothing to split) with tensor parallelism
        alone, on the same weights and KV cache.
        """
        if argmax not in ("distributed", "gather"):
            raise ValueError(f"argmax must be 'distributed' or 'gather', not {argmax!r}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), not {temperature!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, not {max_new_tokens}")
        prompt = self.check_tokens(prompt, extra=max_new_tokens)
        B, T = prompt.shape
        cache, rng = self.new_cache(B, T + max_new_tokens), np.random.default_rng(seed)
        out, step_tokens, pos0 = [prompt], prompt, 0
        sequence_parallel = self.tp.sequence_parallel
        try:
            for _ in range(max_new_tokens):
                x = self.decode(step_tokens, cache, pos0)
                if self.tp.sequence_parallel:  # the prefill's blocks: from now on T = 1
                    x, self.tp.sequence_parallel = self.tp.gather_from_sp(x), False
                pos0 += step_tokens.shape[1]
                if temperature == 0 and argmax == "distributed":
                    nxt = self.argmax_last(x)
                else:
                    logits = self.tp.gather_from_tp(self.logit_parts(x[:, -1]), axis=-1)
                    if temperature == 0:
                        nxt = logits.argmax(-1)
                    else:
                        probs = softmax(logits.astype(np.float64) / temperature)
                        nxt = np.array([rng.choice(len(row), p=row) for row in probs])
                step_tokens = nxt[:, None].astype(np.int64)
                out.append(step_tokens)
                if on_token is not None and on_token(step_tokens[:, 0]):
                    break
        finally:
            self.tp.sequence_parallel = sequence_parallel
        return np.concatenate(out, axis=1)
