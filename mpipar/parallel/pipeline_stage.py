"""One stage of a pipeline-parallel GPT-2: a contiguous range of its blocks, run one
micro-batch at a time (Huang et al. 2019, "GPipe", sec. 2).

Stage s of S holds blocks ``blocks.split(n_layer, S, s)`` (``np.array_split`` sizes: 5 layers
on 3 stages are 2, 2, 1); the first stage also the embeddings, the last also ln_f, the LM head
and the loss. Within a stage the model is tensor-parallel as usual (``GPT`` over ``tp_comm``).

GPT-2 ties its LM head to the token embedding, so with S > 1 the first and the last stage
each hold a copy of ``wte`` (Megatron-LM does the same, Shoeybi et al. 2019, sec. 3): the
embedding's gradient and the head's are kept apart here -- ``grads`` and ``embedding_grads``
-- and added once, at the end of the step, by whoever holds both (``tied_sum``); on one stage
that is a local addition, so every split gives the same bits.

``forward(micro, x)`` keeps what backward needs, per micro-batch; ``backward(micro, dy)``
returns the input gradient (to send to the previous stage) and adds the micro-batch's
gradients into the stage's running sums, micro-batches in the order they come. With
``split=True`` backward computes only input gradients (B) and ``weights(micro)`` the weight
gradients later (W), as zero-bubble schedules need (see ``models.linear.DeferredGrads``).
"""
import numpy as np

from ..collectives.blocks import split as block_range
from ..models import GPT
from ..models.linear import DeferredGrads
from ..models.params import BLOCK

FIRST = ("wte.weight", "wpe.weight")                  #: the first stage's own parameters
LAST = ("ln_f.weight", "ln_f.bias", "wte.weight")     #: the last stage's (wte: the tied head)


def stage_problem(n_layer, n_stages):
    """Why ``n_layer`` blocks cannot be cut into ``n_stages`` stages, or None (no message)."""
    if not isinstance(n_stages, int) or isinstance(n_stages, bool) or n_stages < 1:
        return f"the number of pipeline stages must be a whole number >= 1, not {n_stages!r}"
    if n_stages > n_layer:
        return (f"{n_stages} pipeline stages need at least {n_stages} layers; the model has "
                f"{n_layer}: use at most {n_layer} stages")
    return None


def stage_names(config, stage, n_stages):
    """The parameters stage ``stage`` of ``n_stages`` holds."""
    blocks = block_range(config.n_layer, n_stages, stage)
    names = {f"h.{i}.{name}" for i in range(blocks.start, blocks.stop) for name in BLOCK}
    if stage == 0:
        names.update(FIRST)
    if stage == n_stages - 1:
        names.update(LAST)
    return names


class PipelineStage:
    """Stage ``stage`` of ``n_stages`` of a GPT-2, tensor-parallel over ``tp_comm``."""

    def __init__(self, config, params, stage, n_stages, tp_comm, split=False, **model_options):
        problem = stage_problem(config.n_layer, n_stages)
        if problem:
            raise ValueError(problem)
        self.stage, self.n_stages, self.split = stage, n_stages, split
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.blocks = block_range(config.n_layer, n_stages, stage)
        self.model = GPT(config, params, tp_comm, names=stage_names(config, stage, n_stages),
                         **model_options)
        self.saved = {}       # micro-batch -> what its backward needs
        self.waiting = {}     # micro-batch -> its DeferredGrads, until weights(micro)
        self.grads = None     # running sums over micro-batches, as model.shards
        self.embedding_grads = None  # the first stage's wte gradient (the embedding's use)
        self.loss = 0.0

    # --- one micro-batch ---------------------------------------------------------------------

    def forward(self, micro, x, targets=None, weights=None):
        """The stage on micro-batch ``micro``: ``x`` is its tokens (first stage) or the previous
        stage's output; returns the output to send on, or the loss (last stage)."""
        m = self.model
        tokens = None
        if self.first:
            tokens = m.check_tokens(x)
            x = m.embed(tokens)
        saved = []
        for i in range(self.blocks.start, self.blocks.stop):
            x, block = m.block(i, x)
            saved.append(block)
        head = None
        if self.last:
            loss, _, head = m.head_loss(x, targets, weights)
            self.loss += loss  # micro-batches in the order they come
        self.saved[micro] = (tokens, saved, head)
        return loss if self.last else x

    def backward(self, micro, dy=None):
        """Backward of micro-batch ``micro`` from its output gradient ``dy`` (None on the last
        stage: the loss's); returns the input gradient (None on the first stage)."""
        m = self.model
        tokens, saved, head = self.saved.pop(micro)
        grads = DeferredGrads(len(m.shards)) if self.split else [{} for _ in m.shards]
        if self.last:
            dy = m.head_backward(head, grads)
        for i, block in zip(reversed(range(self.blocks.start, self.blocks.stop)), reversed(saved)):
            dy = m.block_backward(i, block, dy, grads)
        if self.first:
            embedding = [{} for _ in m.shards]
            m.embed_backward(tokens, dy, embedding)
            grads[0]["wpe.weight"] = embedding[0].pop("wpe.weight")
            self.embedding_grads = _add(self.embedding_grads, embedding)
            dy = None
        if self.split:
            self.waiting[micro] = grads
        else:
            self.grads = _add(self.grads, grads)
        return dy

    def weights(self, micro):
        """The weight gradients of micro-batch ``micro`` (W, after ``backward`` with split)."""
        self.grads = _add(self.grads, self.waiting.pop(micro).finish())

    # --- the step ------------------------------------------------------------------------------

    def reset(self):
        """Forget the last step's sums (call before the first micro-batch)."""
        if self.saved or self.waiting:
            raise RuntimeError(f"stage {self.stage}: micro-batches {sorted({*self.saved, *self.waiting})}"
                               f" did not finish backward")
        self.grads = self.embedding_grads = None
        self.loss = 0.0

    def in_flight(self):
        """Micro-batches whose activations this stage holds now."""
        return len(self.saved) + len(self.waiting)

    def activation_bytes(self):
        """Bytes of the arrays kept for backward by the micro-batches in flight."""
        seen, total = set(), 0
        for value in (*self.saved.values(), *(g.waiting for g in self.waiting.values())):
            for a in _arrays(value):
                if id(a) not in seen:
                    seen.add(id(a))
                    total += a.nbytes
        return total


def _add(total, grads):
    """total + grads, shard by shard and name by name (the first call copies nothing)."""
    if total is None:
        return [dict(g) for g in grads]
    for acc, g in zip(total, grads):
        for name, value in g.items():
            if name in acc:
                acc[name] = acc[name] + value
            else:
                acc[name] = value
    return total


def _arrays(value):
    """Every NumPy array inside nested tuples, lists, dicts and dataclasses."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays(v)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            yield from _arrays(getattr(value, name))
