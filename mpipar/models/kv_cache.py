"""The KV cache of generation: every layer's keys and values, kept per shard.

Generating token t recomputes nothing of tokens 0..t-1: their keys and values
are stored when first computed, so each step runs the model on one new position
(Pope et al. 2022, "Efficiently Scaling Transformer Inference"). Under
tensor parallelism a shard keeps the keys and values of its own key/value heads
only, so the cache is split like the attention weights and no step sends any of it.

    cache[layer][shard] = (K, V), each (batch, the shard's key/value heads, length, head_dim)
"""
import numpy as np


def new_cache(n_layer, batch, length, kv_heads, head_dim, dtype):
    """Empty (K, V) buffers per layer and shard; ``kv_heads``: each shard's number of heads."""
    return [[tuple(np.zeros((batch, n, length, head_dim), dtype) for _ in range(2)) for n in kv_heads]
            for _ in range(n_layer)]


def extend(entry, k, v, pos0):
    """Store the keys and values (B, heads, T, head_dim) of positions pos0..pos0+T-1 in one
    shard's ``entry`` (K, V) and return the keys and values of positions 0..pos0+T-1."""
    keys, values = entry
    end = pos0 + k.shape[2]
    keys[:, :, pos0:end], values[:, :, pos0:end] = k, v
    return keys[:, :, :end], values[:, :, :end]
