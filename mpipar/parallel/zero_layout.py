"""Who holds what under ZeRO: the flat layout of the parameters over data-parallel ranks, and
the predicted memory and bytes per step of DP and ZeRO stages 1-3.

The parameters are cut into the groups of ``model.grad_order()`` (ln_f, the blocks last to
first, the embeddings) -- the order backward finishes their gradients, so a group is a
bucket of stage 2's reduce-scatter and a layer of stage 3's allgather. Group g's
parameters, flattened in that order, make n_g numbers; rank r owns block r of them as
``blocks.split_offsets(n_g, p)`` cuts it (sizes differ by at most one: uneven shards).

Memory per rank in float32 training, Psi parameters, p data-parallel ranks, Psi_r the
numbers rank r owns (about Psi / p) -- Rajbhandari et al. 2020, "ZeRO", sec. 5 and fig. 1:

    DP       params 4 Psi + grads 4 Psi   + Adam m, v 8 Psi   = 16 Psi
    ZeRO-1   4 Psi        + 4 Psi         + 8 Psi_r           (optimizer state sharded)
    ZeRO-2   4 Psi        + 4 Psi_r       + 8 Psi_r           (gradients too)
    ZeRO-3   4 Psi_r      + 4 Psi_r       + 8 Psi_r = 16 Psi_r (parameters too)

The paper's 16 Psi is mixed precision: fp16 params 2 Psi + fp16 grads 2 Psi + K = 12 Psi of
fp32 optimizer state (a master copy of the parameters, momentum, variance), so its stage 1
is 4 Psi + 12 Psi / p. In float32 the parameters are their own master copy: the same 16 Psi,
but only 8 Psi of it is optimizer state, and stage 1 saves less (8 Psi + 8 Psi / p).
Buffers come on top: the gradients backward holds before its group is reduced (stage 2:
a group at a time, except the tied embedding's, which accumulates through all of backward),
stage 3's gathered groups (the one in use and the one prefetched), activations.

Bytes sent per rank and step with ring collectives, b bytes a number (Thakur et al. 2005):
a ring reduce-scatter of group g sends every block but its own, b (n_g - n_g,r); a ring
allgather every block but its right neighbour's, b (n_g - n_g,r+1). Summed over groups:
DP's ring all-reduce moves 2 b Psi (p-1)/p, stages 1 and 2 the same (a reduce-scatter of
the gradients, an allgather of the updated parameters), stage 3 an allgather in forward, one
in backward and a reduce-scatter: 3 b Psi (p-1)/p, 1.5x (the paper's sec. 7). Here the tied
embedding is used three times (embedding, LM head, the embedding's backward) and ln_f once
(forward and backward are adjacent), so stage 3's exact count is per group.
"""
from dataclasses import dataclass
import math

from ..collectives.blocks import split_offsets

STAGES = (0, 1, 2, 3)  #: 0: plain data parallelism (every rank holds everything)


@dataclass(frozen=True)
class Group:
    """One group of grad_order: its parameters' names and shapes, flattened one after another."""

    names: tuple
    shapes: tuple
    starts: tuple  #: where each parameter begins in the group's flat numbers (and its end: n)
    split: tuple   #: split_offsets(n, p): rank r owns flat[split[r]:split[r+1]]

    @property
    def n(self):
        return self.starts[-1]

    def owned(self, r):
        return self.split[r + 1] - self.split[r]

    def pieces(self, r):
        """(name, lo, hi, ndim) for each parameter overlapping rank r's block: lo:hi is the
        overlap, counted from the start of the block."""
        a, b = self.split[r], self.split[r + 1]
        out = []
        for name, shape, s, e in zip(self.names, self.shapes, self.starts, self.starts[1:]):
            lo, hi = max(a, s), min(b, e)
            if lo < hi:
                out.append((name, lo - a, hi - a, len(shape)))
        return out


class ZeroLayout:
    """The groups of ``model.grad_order()`` cut over p ranks (a model without tensor
    parallelism: one shard, ``model.shards[0]``)."""

    def __init__(self, model, p):
        self.p, self.groups, self.group_of = p, [], {}
        for names in model.grad_order():
            shapes = tuple(tuple(model.shards[0][name].shape) for name in names)
            starts = [0]
            for shape in shapes:
                starts.append(starts[-1] + math.prod(shape))
            self.groups.append(Group(tuple(names), shapes, tuple(starts),
                                     tuple(split_offsets(starts[-1], p))))
            for name in names:
                self.group_of[name] = len(self.groups) - 1

    @property
    def numel(self):
        """Psi: every parameter's numbers."""
        return sum(g.n for g in self.groups)

    def owned(self, r):
        """Psi_r: the numbers rank r owns."""
        return sum(g.owned(r) for g in self.groups)


def predicted_memory(stage, psi, psi_r, itemsize=4):
    """Bytes per rank of parameters, gradients and AdamW's m and v (the table at the top)."""
    params = itemsize * (psi_r if stage >= 3 else psi)
    grads = itemsize * (psi_r if stage >= 2 else psi)
    optimizer = 2 * itemsize * (psi_r if stage >= 1 else psi)
    return dict(params=params, grads=grads, optimizer=optimizer, total=params + grads + optimizer)


def ring_reduce_scatter_bytes(group, r, itemsize=4):
    return itemsize * (group.n - group.owned(r))


def ring_allgather_bytes(group, r, itemsize=4):
    p = len(group.split) - 1
    return itemsize * (group.n - group.owned((r + 1) % p))


def naive_allreduce_bytes(n, r, p, itemsize=4):
    """Naive all-reduce: every rank sends its n numbers to rank 0, which sends the sum to each."""
    return 0 if p == 1 else itemsize * n * (p - 1 if r == 0 else 1)


def predicted_step_bytes(layout, stage, r, deterministic=False, gathers=None, itemsize=4):
    """{op: bytes rank r sends in one step} for the gradients and parameters of ``layout``.

    Deterministic mode all-reduces each group's gradients (naive, rank order) instead of the
    ring reduce-scatter. ``gathers``: {group index: allgathers per step} of stage 3 (see
    ``zero_gather``); stages 1-2 gather every group once, after the update.
    """
    p = layout.p
    out = dict(reduce_scatter=0, allreduce=0, allgather=0)
    for gi, g in enumerate(layout.groups):
        if deterministic:
            out["allreduce"] += naive_allreduce_bytes(g.n, r, p, itemsize)
        else:
            out["reduce_scatter"] += ring_reduce_scatter_bytes(g, r, itemsize)
        if stage >= 1:
            times = gathers[gi] if stage == 3 else 1
            out["allgather"] += times * ring_allgather_bytes(g, r, itemsize)
    return out


def paper_step_bytes(stage, psi, p, itemsize=4):
    """The paper's volume per rank and step: 2 Psi (p-1)/p numbers for DP and stages 1-2,
    3 Psi (p-1)/p for stage 3."""
    return itemsize * psi * (3 if stage == 3 else 2) * (p - 1) / p
