"""ZeRO stage 3's parameters: each group gathered just before the model uses it, freed after,
the next one's gather started while the current one computes.

Rajbhandari et al. 2020 ("ZeRO", sec. 5.3): with the parameters partitioned, each layer's
are all-gathered before its forward and again before its backward, and discarded after
use. The model is not edited for this: ``LayerGather`` wraps, on the model instance, the
methods ``loss_and_grads`` calls one layer at a time (``embed``, ``block``, ``head_loss``,
``head_backward``, ``block_backward``, ``embed_backward``) with a function that makes the
layer's groups of ``grad_order`` present in ``model.shards[0]`` (views into the gathered
flat numbers), runs the layer, and removes those the next call does not need.

Prefetch: a training step calls the layers in a known order (``step_uses``); while
layer k runs, the ring allgather of layer k+1's missing groups has been started
(``RingAllgather``). Without a progress thread only the first ring step's messages can
travel during the computation (all of them on 2 ranks; small messages go eagerly);
the rest move when the next layer waits for them.
"""
from ..collectives.nonblocking import DEFAULT_TAG
from ..collectives.nonblocking_allgather import RingAllgather
from ..models.params import BLOCK

WRAPPED = ("embed", "block", "head_loss", "head_backward", "block_backward", "embed_backward")


def step_uses(layout, n_layer):
    """The groups each wrapped call of one ``loss_and_grads`` needs, in call order."""
    emb, ln_f = layout.group_of["wte.weight"], layout.group_of["ln_f.weight"]
    block = [layout.group_of[f"h.{i}.{sorted(BLOCK)[0]}"] for i in range(n_layer)]
    head = (ln_f, emb)
    return [(emb,), *[(g,) for g in block], head, head, *[(g,) for g in reversed(block)], (emb,)]


def gather_counts(uses, n_groups):
    """{group: allgathers per step}: a group is gathered for every use that follows a call
    which did not need it (and is kept between two calls that both do)."""
    counts, previous = {g: 0 for g in range(n_groups)}, ()
    for need in uses:
        for g in need:
            counts[g] += g not in previous
        previous = need
    return counts


class LayerGather:
    """Stage 3's groups on demand. ``shards[g]``: this rank's numbers of group g (the trainer
    updates them in place); ``begin_step()`` / ``end_step()`` bracket a ``loss_and_grads``."""

    def __init__(self, model, comm, layout, shards, prefetch=True):
        self.model, self.comm, self.layout, self.shards = model, comm, layout, shards
        self.prefetch = prefetch
        self.uses = step_uses(layout, model.config.n_layer)
        self.present, self.pending = {}, {}  # group -> gathered flat numbers / RingAllgather
        self.hold, self.cursor = False, None
        self.peak_bytes = 0  #: the most bytes of gathered parameters held at once in a step
        for method in WRAPPED:
            setattr(model, method, self._wrap(method, getattr(model, method)))

    def _groups(self, method, args):
        if method in ("block", "block_backward"):
            return (self.layout.group_of[f"h.{args[0]}.{sorted(BLOCK)[0]}"],)
        if method in ("embed", "embed_backward"):
            return (self.layout.group_of["wte.weight"],)
        return (self.layout.group_of["ln_f.weight"], self.layout.group_of["wte.weight"])

    def _wrap(self, method, original):
        def call(*args, **kwargs):
            need, following = self._groups(method, args), ()
            if self.cursor is not None:  # inside a training step: the order is known
                if self.uses[self.cursor] != need:
                    raise RuntimeError(f"ZeRO-3: {method} needs groups {need}, the step's order "
                                       f"says {self.uses[self.cursor]}: update step_uses")
                self.cursor += 1
                following = self.uses[self.cursor] if self.cursor < len(self.uses) else ()
            self.ensure(need)
            if self.prefetch:
                self.start(following)
            try:
                return original(*args, **kwargs)
            finally:
                for g in self.pending.values():
                    g.progress()
                if not self.hold:
                    self.release([g for g in need if g not in following])
        call.__wrapped__ = original
        return call

    def start(self, groups):
        """Start the allgathers of ``groups`` not yet present or under way."""
        for gi in groups:
            if gi not in self.present and gi not in self.pending:
                group = self.layout.groups[gi]
                lengths = [group.owned(r) for r in range(self.layout.p)]
                self.pending[gi] = RingAllgather(self.comm, self.shards[gi], lengths,
                                                 tag=DEFAULT_TAG + 1 + gi).start()
        self._account()

    def ensure(self, groups):
        """Make ``groups`` present in ``model.shards[0]`` (waiting for their gathers)."""
        self.start(groups)
        for gi in groups:
            if gi in self.pending:
                flat = self.pending.pop(gi).wait()
                group, params = self.layout.groups[gi], self.model.shards[0]
                for name, shape, s, e in zip(group.names, group.shapes, group.starts, group.starts[1:]):
                    params[name] = flat[s:e].reshape(shape)
                self.present[gi] = flat
        self._account()

    def release(self, groups):
        """Drop ``groups``' gathered numbers (only this rank's shard remains)."""
        for gi in groups:
            if self.present.pop(gi, None) is not None:
                for name in self.layout.groups[gi].names:
                    del self.model.shards[0][name]

    def _account(self):
        if self.cursor is None:  # gather_all for evaluation is not the step's memory
            return
        held = sum(f.nbytes for f in self.present.values()) + sum(
            g.buf.nbytes for g in self.pending.values())
        self.peak_bytes = max(self.peak_bytes, held)

    def begin_step(self):
        self.hold = False
        self.release(list(self.present))
        self.cursor = 0

    def end_step(self):
        if self.pending or self.present:
            raise RuntimeError(f"ZeRO-3: groups still gathered after the step: "
                               f"{sorted(self.pending) + sorted(self.present)}")
        self.cursor = None

    def gather_all(self):
        """Every group present and kept (until the next step): the whole model, to evaluate
        or save."""
        self.ensure(range(len(self.layout.groups)))
        self.hold = True
