"""One stage of a pipeline-parallel language model for inference: a contiguous range of its
blocks, each stage's parameters read (from a GGUF file: only its own slices) and nothing more
(Huang et al. 2019, "GPipe", sec. 2; Narayanan et al. 2021, sec. 2.2).

    stage = InferenceStage.from_gguf(gguf, stage=k, n_stages=pp, tp_comm=mesh.tp_comm)
    stage = InferenceStage.build(config, params, k, pp, tp_comm)   # GPT-2 or Llama

Stage k of S holds blocks ``blocks.split(n_layer, S, k)`` (``np.array_split`` sizes: 5 layers
on 3 stages are 2, 2, 1, SmolLM2's 30 on 4 are 8, 8, 7, 7); the first stage also the token
embedding (GPT-2: and the learned positions), the last the final norm and the LM head -- the
token embedding again where the two are tied (SmolLM2, GPT-2), so with S > 1 the first and
the last stage each hold a copy. Within a stage the model is tensor-parallel as usual, over
``tp_comm``, and the KV cache of a stage holds its own layers only (``models.kv_cache``):
under pipeline parallelism a cached key or value never leaves the stage that computed it.

The stage speaks one interface for both families: ``embed(tokens, pos0)``,
``blocks(x, pos0, cache)`` and ``final(x)`` (the last norm); the head is the model's own
(``logit_parts``, ``argmax_last``).
"""
from ..collectives.blocks import split as block_range
from ..models import GPT, Llama, LlamaConfig, kv_cache
from ..models.params import LLAMA_BLOCK
from .pipeline_stage import stage_names as gpt2_stage_names
from .pipeline_stage import stage_problem

__all__ = ["InferenceStage", "layers_per_stage", "stage_names"]


def layers_per_stage(n_layer, n_stages):
    """How many blocks each stage holds (``np.array_split`` sizes)."""
    return [len(range(n_layer)[block_range(n_layer, n_stages, k)]) for k in range(n_stages)]


def stage_names(config, stage, n_stages):
    """The parameters stage ``stage`` of ``n_stages`` holds, for a GPT-2 or a Llama."""
    if not isinstance(config, LlamaConfig):
        return gpt2_stage_names(config, stage, n_stages)
    blocks = block_range(config.n_layer, n_stages, stage)
    names = {f"layers.{i}.{name}" for i in range(blocks.start, blocks.stop) for name in LLAMA_BLOCK}
    if stage == 0:
        names.add("embed_tokens.weight")
    if stage == n_stages - 1:
        names.update(("norm.weight", "embed_tokens.weight" if config.tie_embeddings
                      else "lm_head.weight"))
    return names


class InferenceStage:
    """Stage ``stage`` of ``n_stages`` of ``model`` (a GPT or Llama built with this stage's
    ``names``, tensor-parallel over its own communicator)."""

    def __init__(self, model, stage, n_stages):
        problem = stage_problem(model.config.n_layer, n_stages)
        if problem is None and not 0 <= stage < n_stages:
            problem = f"stage {stage!r} is not one of the {n_stages} stages"
        if problem:
            raise ValueError(problem)
        self.model, self.config, self.stage, self.n_stages = model, model.config, stage, n_stages
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.blocks_range = block_range(model.config.n_layer, n_stages, stage)
        self.llama = isinstance(model, Llama)

    @classmethod
    def build(cls, config, params, stage, n_stages, tp_comm, **model_options):
        """The stage of a GPT-2 (GPTConfig) or a Llama (LlamaConfig) from full arrays or a source;
        ``model_options``: the model's (algorithm, deterministic, ways, ...)."""
        problem = stage_problem(config.n_layer, n_stages)
        if problem:
            raise ValueError(problem)
        model_class = Llama if isinstance(config, LlamaConfig) else GPT
        model = model_class(config, params, tp_comm, names=stage_names(config, stage, n_stages),
                            **model_options)
        return cls(model, stage, n_stages)

    @classmethod
    def from_gguf(cls, path_or_gguffile, stage, n_stages, tp_comm, dtype="float32", **model_options):
        """The stage of a GGUF file's Llama: this rank reads and dequantizes only its stage's
        tensors, and of those only its tensor-parallel slices."""
        from ..models.gguf import GGUFFile
        from ..models.llama_gguf import GGUFSource
        reader = path_or_gguffile
        if not hasattr(reader, "read"):
            reader = GGUFFile(path_or_gguffile)
        config = reader.llama_config(dtype=dtype)
        return cls.build(config, GGUFSource(reader, config), stage, n_stages, tp_comm,
                         **model_options)

    @property
    def n_blocks(self):
        return self.blocks_range.stop - self.blocks_range.start

    def weights_per_token(self):
        """Multiply-adds per token of this rank's matrix products: the elements of its blocks'
        weight matrices, plus the LM head's on the last stage (an embedding is a lookup, not a
        product). Attention's scores and the norms are left out: at short contexts they are a
        small part. It weighs the stages' work for the bubble's prediction."""
        head = getattr(self.model, "head", "wte.weight")
        total = 0
        for shard in self.model.shards:
            for name, a in shard.items():
                if getattr(a, "ndim", 0) == 2 and name.startswith(("layers.", "h.")):
                    total += a.size
            if self.last:
                total += shard[head].size
        return int(total)

    def new_cache(self, batch, length):
        """(K, V) buffers of this stage's layers only, per layer and shard."""
        heads = [s["kv_heads"].stop - s["kv_heads"].start for s in self.model.shards]
        return kv_cache.new_cache(self.n_blocks, batch, length, heads, self.config.head_dim,
                                  self.model.dtype)

    def embed(self, tokens, pos0=0):
        """The first stage's input: the embedding of ``tokens`` at positions pos0.. ."""
        if self.llama:
            return self.model.embed(tokens)
        return self.model.embed(tokens, pos0)

    def blocks(self, x, pos0=0, cache=None):
        """This stage's blocks on the residual stream x (positions pos0..), reading and extending
        ``cache`` (this stage's ``new_cache``) if given."""
        m, start = self.model, self.blocks_range.start
        rope = m.rope(pos0, x.shape[1]) if self.llama else None
        for n, i in enumerate(range(start, self.blocks_range.stop)):
            layer = None if cache is None else cache[n]
            if self.llama:
                x = m.block(i, x, rope, layer, pos0)
            else:
                x, _ = m.block(i, x, layer, pos0)
        return x

    def final(self, x):
        """The last stage's final norm (what the LM head reads)."""
        return self.model._norm("norm.weight" if self.llama else "ln_f.", x)

    def logits(self, x):
        """The full logits of the normed hidden states x, identical on every tp rank."""
        m = self.model
        return m.tp.gather_from_tp(m.logit_parts(x), axis=-1)
