"""Llama-family language models in NumPy, written once for any tensor-parallel split (serial = a
split of 1): forward and generation. SmolLM2-135M-Instruct is one (``load_gguf``).

    from mpipar.models import Llama, LlamaConfig, init_params
    model = Llama(config, params, comm=MPI.COMM_WORLD)  # each rank keeps only its shards
    logits = model.forward(tokens)                       # (B, T) ints -> (B, T, vocab), every rank
    out = model.generate(prompt, max_new_tokens)         # greedy, with a KV cache
    model = load_gguf(smollm2_path(), comm)              # SmolLM2-135M-Instruct, a slice per rank

The architecture of Llama (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation
Language Models", sec. 2.2): a token embedding and no learned positions; pre-norm
blocks x + attn(rms_norm(x)), x + mlp(rms_norm(.)) with RMSNorm (Zhang & Sennrich
2019); causal self-attention with rotary positions on q and k (Su et al. 2021) and
grouped-query attention, n_head / n_kv_head query heads sharing one key/value head
(Ainslie et al. 2023); the SwiGLU MLP down(silu(gate x) * up x) (Shazeer 2020); a
final RMSNorm; the LM head, tied to the embedding in SmolLM2.

Tensor parallelism is GPT-2's (Shoeybi et al. 2019), from the same layers: q, k, v
column-parallel by heads -- a shard computes the key/value heads its query heads
read, so a key/value head is replicated where p > n_kv_head -- o_proj row-parallel,
one all-reduce; gate and up column-parallel, down row-parallel, one all-reduce;
the vocab-parallel embedding and LM head. The KV cache keeps each shard's own
key/value heads. ``sequence_parallel`` (forward only) splits the norms and residual
stream by positions, as GPT-2's (mpipar.parallel.tensor_parallel). Parameter names,
shapes and splits are in ``params`` (LLAMA_TOP, LLAMA_BLOCK).
"""
import numpy as np

from . import layers, linear, rotary
from .config import LlamaConfig
from .language_model import LanguageModel
from .llama_gguf import GGUFSource


class Llama(LanguageModel):
    """A Llama-family model whose weights are split over ``comm`` (or emulating a ``ways``-way
    split on one rank).

    ``params``: a dict of full arrays in mpipar's layout (``init_params``), or a source
    that hands out only the slices a shard owns (``sources.ArraySource``; ``load_gguf``).
    The other arguments, construction, token checks and ``generate`` are ``LanguageModel``'s.
    """

    def __init__(self, config, params, comm=None, algorithm="auto", deterministic=False, ways=None,
                 comm_dtype="float32", rounding="per_hop", names=None, sequence_parallel=False):
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"Llama needs a LlamaConfig, not {type(config).__name__}")
        super().__init__(config, params, comm, algorithm, deterministic, ways, comm_dtype, rounding,
                         names, sequence_parallel)
        self.head = "embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"

    def embed(self, tokens):
        """The vocab-parallel token embedding (positions enter through the rotary tables)."""
        return linear.vocab_parallel_embedding(self.tp, self.shards, "embed_tokens.weight", tokens)

    def _norm(self, name, x):
        """The RMSNorm whose gain is ``name``, replicated on every shard (on each block of
        positions with sequence parallelism)."""
        weight, eps = self.shards[0][name], self.config.rms_norm_eps
        return self.tp.per_block(lambda b: layers.rms_norm(b, weight, eps), x)

    def rope(self, pos0, length):
        """The rotary tables (cos, sin) of positions pos0 .. pos0+length-1."""
        c = self.config
        return rotary.tables(c.head_dim, c.rope_theta, pos0, length, self.dtype)

    def block(self, i, x, rope, cache=None, pos0=0):
        """Block i on the residual stream x at positions pos0..: x + attn(rms_norm(x)), then
        + mlp(rms_norm(.)). ``rope``: ``self.rope(pos0, T)``; ``cache``: ``new_cache()[i]``."""
        b, group = f"layers.{i}.", self.config.n_head // self.config.n_kv_head
        a = layers.grouped_query_attention(self.tp, self.shards, b + "self_attn.",
                                           self._norm(b + "input_layernorm.weight", x), group, rope,
                                           cache, pos0)
        x = self.tp.per_block(np.add, x, a)
        m = layers.swiglu_mlp(self.tp, self.shards, b + "mlp.",
                              self._norm(b + "post_attention_layernorm.weight", x))
        return self.tp.per_block(np.add, x, m)

    def decode(self, tokens, cache, pos0, hidden=None):
        """The final hidden states of ``tokens`` at positions pos0.., the earlier positions'
        keys and values read from (and these ones added to) the KV cache if ``cache``."""
        x, rope = self.embed(tokens), self.rope(pos0, tokens.shape[1])
        for i in range(self.config.n_layer):
            x = self.block(i, x, rope, None if cache is None else cache[i], pos0)
            if hidden is not None:
                hidden.append(x)
        return self._norm("norm.weight", x)

    def final_hidden(self, tokens, hidden=None):
        """The final RMSNorm'd hidden states (B, T, d) of ``tokens``: what the LM head reads.

        Pass a list as ``hidden`` to collect the residual stream after every block.
        """
        return self.decode(self.check_tokens(tokens), None, 0, hidden)

    def logit_parts(self, x):
        """Each shard's slice of the logits: x @ its rows of the LM head (the embedding, if tied)."""
        return linear.lm_head(self.tp, self.shards, self.head, x)

    def forward(self, tokens, hidden=None):
        """Logits (B, T, vocab) as float, complete and identical on every rank.

        Pass a list as ``hidden`` to collect the residual stream after every block.
        """
        return self.tp.gather_from_tp(self.logit_parts(self.final_hidden(tokens, hidden)), axis=-1)


def load_gguf(path_or_gguffile, comm=None, dtype="float32", **model_options):
    """The Llama of a GGUF file (a path or an open ``gguf.GGUFFile``), split over ``comm``
    (default MPI.COMM_WORLD). Its configuration comes from the file's metadata; each rank
    reads, dequantizes and keeps only its own slices. ``model_options``: Llama's
    (algorithm, deterministic, ways, comm_dtype, rounding)."""
    reader = path_or_gguffile
    if not hasattr(reader, "read"):
        from .gguf import GGUFFile  # reads the metadata only; tensors when a shard asks
        reader = GGUFFile(path_or_gguffile)
    config = reader.llama_config(dtype=dtype)
    return Llama(config, GGUFSource(reader, config), comm, **model_options)
