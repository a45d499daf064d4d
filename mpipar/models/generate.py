"""Generation with a KV cache, for any tensor-parallel language model of mpipar.

``Generation`` is a base class of the models: it needs of a model only ``tp`` and
``shards`` (with each shard's ``vocab`` and ``kv_heads`` slices), ``config``
(``n_layer``, ``head_dim``), ``dtype``, ``check_tokens``, ``logit_parts`` and
``decode(tokens, cache, pos0)`` -- the final hidden states of new positions, the
earlier ones read from the cache (see ``kv_cache``).

Greedy decoding picks the most likely token without gathering the logits: each
shard offers its best candidate and only those cross between ranks.
"""
import numpy as np

from . import kv_cache
from .layers import softmax


class Generation:
    """``generate`` (greedy or sampled), its distributed argmax and its KV cache."""

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
            x = self.decode(step_tokens, cache, pos0)
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
