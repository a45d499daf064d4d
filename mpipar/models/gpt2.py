"""GPT-2 in NumPy, written once for any tensor-parallel split (serial = a split of 1).

    from mpipar.model import GPT, GPTConfig, init_params, load_state_dict
    model = GPT(config, params, comm=MPI.COMM_WORLD)   # each rank keeps only its shards
    logits = model.forward(tokens)                      # (B, T) ints -> (B, T, vocab), every rank
    out = model.generate(prompt, max_new_tokens)        # greedy, with a KV cache

The architecture of GPT-2 (Radford et al. 2019): learned token and position
embeddings; pre-LayerNorm blocks x + attn(ln_1(x)), x + mlp(ln_2(x)); causal
multi-head self-attention; an MLP with GELU (tanh approximation, Hendrycks &
Gimpel 2016); a final LayerNorm; the LM head tied to the token embedding.

Tensor parallelism follows Megatron-LM (Shoeybi et al. 2019): attention
column-parallel by heads then row-parallel c_proj, one all-reduce per block;
the MLP column-parallel c_fc, GELU locally, row-parallel c_proj, one all-reduce;
a vocab-parallel embedding (masked lookup, all-reduce) and LM head (all-gather of
the logit slices, or a distributed argmax that moves only the winners). Biases of
row-parallel layers are added once, after the reduction. See ``tensor_parallel``.
"""
import numpy as np

from ..collectives import lowp
from ..collectives import ALGORITHMS
from ..parallel.tensor_parallel import TPGroup
from .config import GPTConfig, PRESETS
from .layers import gelu, layer_norm, softmax
from .params import check_params, init_params, load_state_dict, shard_params

__all__ = ["GPT", "GPTConfig", "PRESETS", "init_params", "load_state_dict"]


class GPT:
    """GPT-2 whose weights are split over ``comm`` (or emulating a ``ways``-way split on one rank).

    ``algorithm`` is the allreduce algorithm of every row-parallel reduction;
    ``deterministic`` reduces partial sums in fixed rank order, so a serial run
    emulating the same split (``comm`` of size 1, ``ways`` = p) gives identical bits.
    ``comm_dtype`` float16 or bfloat16 sends every reduction and logit gather in
    16 bits, rounded ``per_hop`` or ``once`` (see mpipar.compressed).
    """

    def __init__(self, config, params, comm=None, algorithm="auto", deterministic=False, ways=None,
                 comm_dtype="float32", rounding="per_hop"):
        if comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        problem = config.problems()
        p = comm.Get_size() if ways is None else ways
        if algorithm not in (*ALGORITHMS["allreduce"], "mpi", "auto"):
            problem = (f"unknown allreduce algorithm {algorithm!r}; choose from "
                       f"{', '.join((*ALGORITHMS['allreduce'], 'mpi', 'auto'))}")
        elif not isinstance(p, (int, np.integer)) or p < 1:
            problem = f"ways must be a positive number of shards, not {ways!r}"
        elif comm_dtype != "float32" or rounding not in ("per_hop", "none"):
            problem = lowp.problems(comm_dtype, rounding, algorithm)
            if problem is None and deterministic:
                problem = "deterministic mode reduces in float32: drop the 16-bit comm dtype"
        if problem is None and p > config.n_head:
            problem = (f"cannot split {config.n_head} attention heads over {p} ranks: "
                       f"use at most {config.n_head} ranks")
        if problem:
            raise ValueError(problem)  # the same verdict on every rank, before any message
        check_params(config, params)
        self.config = config
        self.tp = TPGroup(comm, ways=p, algorithm=algorithm, deterministic=deterministic,
                          comm_dtype=comm_dtype, rounding=rounding)
        self.dtype = np.dtype(config.dtype)
        self.shards = [shard_params(config, params, r, p) for r in self.tp.shard_ids]
        self.head_dim = config.n_embd // config.n_head

    # --- the pieces ------------------------------------------------------------------------

    def embed(self, tokens, pos0=0):
        """Vocab-parallel lookup: each shard fills the rows it owns, zeros elsewhere; summed."""
        parts = []
        for s in self.shards:
            v = s["vocab"]
            mine = (tokens >= v.start) & (tokens < v.stop)
            rows = s["wte.weight"][np.where(mine, tokens - v.start, 0)]
            parts.append(np.where(mine[..., None], rows, 0).astype(self.dtype))
        x = self.tp.reduce_from_tp(parts)
        wpe = self.shards[0]["wpe.weight"]
        return x + wpe[pos0:pos0 + tokens.shape[1]]

    def attention(self, i, x, cache, pos0, saved=None):
        """Causal self-attention of block i; each shard its own heads; one all-reduce.

        ``saved`` (a list, for training) receives each shard's q, k, v, probabilities
        and head outputs for the backward pass.
        """
        h = f"h.{i}."
        B, T, _ = x.shape
        x = self.tp.copy_to_tp(x)
        partials = []
        for k, s in enumerate(self.shards):
            nh = s["heads"].stop - s["heads"].start
            qkv = x @ s[h + "attn.c_attn.weight"] + s[h + "attn.c_attn.bias"]
            q, key, val = (qkv.reshape(B, T, 3, nh, self.head_dim).transpose(2, 0, 3, 1, 4))
            if cache is not None:  # (B, heads, T_max, hd) per layer and shard
                kc, vc = cache[i][k]
                kc[:, :, pos0:pos0 + T], vc[:, :, pos0:pos0 + T] = key, val
                key, val = kc[:, :, :pos0 + T], vc[:, :, :pos0 + T]
            scores = q @ key.transpose(0, 1, 3, 2) / np.sqrt(self.head_dim).astype(self.dtype)
            future = np.arange(pos0 + T)[None, :] > (pos0 + np.arange(T))[:, None]
            scores = np.where(future, -np.inf, scores)
            probs = softmax(scores)
            y = (probs @ val).transpose(0, 2, 1, 3).reshape(B, T, nh * self.head_dim)
            if saved is not None:
                saved.append(dict(q=q, k=key, v=val, probs=probs, y=y))
            partials.append(y @ s[h + "attn.c_proj.weight"])
        return self.tp.reduce_from_tp(partials) + self.shards[0][h + "attn.c_proj.bias"]

    def mlp(self, i, x, saved=None):
        """c_fc column-parallel, GELU on each shard's own columns, c_proj row-parallel.

        ``saved`` (a list, for training) receives each shard's pre-activation.
        """
        h = f"h.{i}."
        x = self.tp.copy_to_tp(x)
        partials = []
        for s in self.shards:
            pre = x @ s[h + "mlp.c_fc.weight"] + s[h + "mlp.c_fc.bias"]
            if saved is not None:
                saved.append(pre)
            partials.append(gelu(pre) @ s[h + "mlp.c_proj.weight"])
        return self.tp.reduce_from_tp(partials) + self.shards[0][h + "mlp.c_proj.bias"]

    def blocks(self, x, cache=None, pos0=0, hidden=None, saved=None):
        """The transformer blocks and the final LayerNorm.

        ``hidden`` collects the residual stream after every block; ``saved`` (for
        training) one dict per block with what its backward pass needs.
        """
        c, s0 = self.config, self.shards[0]
        eps = c.layer_norm_epsilon
        for i in range(c.n_layer):
            h = f"h.{i}."
            keep = None if saved is None else dict(x1=x, attn=[], mlp=[])
            x = x + self.attention(i, layer_norm(x, s0[h + "ln_1.weight"], s0[h + "ln_1.bias"], eps),
                                   cache, pos0, None if keep is None else keep["attn"])
            if keep is not None:
                keep["x2"] = x
            x = x + self.mlp(i, layer_norm(x, s0[h + "ln_2.weight"], s0[h + "ln_2.bias"], eps),
                             None if keep is None else keep["mlp"])
            if hidden is not None:
                hidden.append(x)
            if saved is not None:
                saved.append(keep)
        if saved is not None:
            saved.append(dict(xf=x))
        return layer_norm(x, s0["ln_f.weight"], s0["ln_f.bias"], eps)

    def logit_parts(self, x):
        """Each shard's slice of the logits: x @ its rows of wte, transposed (tied head)."""
        return [x @ s["wte.weight"].T for s in self.shards]

    # --- the API ---------------------------------------------------------------------------

    def check_tokens(self, tokens, extra=0):
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

    def forward(self, tokens, hidden=None):
        """Logits (B, T, vocab) as float, complete and identical on every rank.

        Pass a list as ``hidden`` to collect the residual stream after every block.
        """
        tokens = self.check_tokens(tokens)
        x = self.blocks(self.embed(tokens), hidden=hidden)
        return self.tp.gather_from_tp(self.logit_parts(x), axis=-1)

    def new_cache(self, batch, length):
        """Per layer and shard, (K, V) buffers of (B, own heads, length, head_dim)."""
        return [[tuple(np.zeros((batch, s["heads"].stop - s["heads"].start, length, self.head_dim),
                                self.dtype) for _ in range(2)) for s in self.shards]
                for _ in range(self.config.n_layer)]

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

    def generate(self, prompt, max_new_tokens, temperature=0.0, seed=0, argmax="distributed"):
        """Extend ``prompt`` (B, T) by ``max_new_tokens``: greedy for temperature 0, else
        sampled with a generator seeded identically on every rank. A KV cache keeps each
        shard's keys and values, so every step computes one new position.

        ``argmax="gather"`` gathers the full logits for greedy steps instead (to compare bytes).
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
        for _ in range(max_new_tokens):
            x = self.blocks(self.embed(step_tokens, pos0), cache=cache, pos0=pos0)
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
        return np.concatenate(out, axis=1)

    def param_bytes(self):
        """Bytes of parameters this process holds (replicated ones counted once)."""
        seen, total = set(), 0
        for s in self.shards:
            for v in s.values():
                if isinstance(v, np.ndarray) and id(v) not in seen:
                    seen.add(id(v))
                    total += v.nbytes
        return total
