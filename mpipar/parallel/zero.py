"""ZeRO: data parallelism whose replicas split the training state instead of copying it
(Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", sec. 5).

Each rank owns block r of every group of ``model.grad_order()`` (``zero_layout``): its
AdamW moments, and from stage 2 its gradients, from stage 3 its parameters.

    stage 1  backward as in DP (the full gradient); after it, each group's gradient is
             reduce-scattered: rank r gets the sum of block r. It updates that block of
             the parameters with its moments and the ranks allgather the parameters.
    stage 2  each group's ring reduce-scatter starts as soon as backward has finished
             the group and advances between layers (``RingReduceScatter``; with
             ``overlap=False`` backward waits for each); the full gradient is dropped
             then, only the block is kept. The tied embedding's gradient lives through all of
             backward (the LM head starts it, the embedding's backward adds to it).
    stage 3  the parameters stay sharded: each layer's are gathered just before its
             forward and again before its backward, and freed after (``zero_gather``;
             the next layer's gather started meanwhile unless ``overlap=False``); no
             allgather after the update.

Gradients are summed exactly as in ``data_parallel``: each rank's loss is weighted by
mask / (predicted positions in the global batch), and the ranks' gradients are added.
The default reduce-scatter is the ring (each rank sends (p-1)/p of the group: half an
all-reduce; with the allgather, stages 1-2 send what DP's ring all-reduce sends, stage 3
1.5 times that). Clipping needs the global norm: each rank sums its block's squares in
float64, one all-reduce of that scalar adds the ranks' sums, sqrt.

Deterministic mode instead all-reduces each group with the naive algorithm (rank 0 adds
((g_0 + g_1) + g_2) + ..., the order of DataParallel's deterministic all-reduce) and keeps
block r: an all-reduce and not a reduce-scatter because the norm must be DP's to the
bit -- DP sums each parameter's squares whole (np.vdot), which a rank holding part of a
parameter cannot reproduce; with the whole group it computes the same terms. AdamW is
elementwise, so updating a block gives the bits of updating the whole: parameters and
losses are bitwise equal to DataParallel(deterministic=True). (The naive reduce-scatter
adds in the same order too -- rank 0 reduces everything, then sends each rank its block --
so the blocks alone would match; the norm is what needs the whole group.) The price:
the naive all-reduce sends p-1 group copies from rank 0, and every rank holds one whole
summed group for a moment.
"""
import time

import numpy as np

from ..collectives import allgather, allreduce, reduce_scatter
from ..collectives.nonblocking import DEFAULT_TAG
from ..collectives.nonblocking_reduce_scatter import RingReduceScatter
from ..models.optim import adamw_update, clip_scale, norm_from_squares
from ..tasks.addition import batch_slice
from .data_parallel import loss_weights
from .zero_gather import LayerGather, gather_counts
from .zero_layout import STAGES, ZeroLayout, naive_allreduce_bytes, predicted_memory, predicted_step_bytes


def zero_problem(stage, tp=1, pipeline=False):
    """Why ZeRO cannot run this way, or None (the same verdict on every rank)."""
    if isinstance(stage, bool) or stage not in STAGES:
        return f"--zero must be one of 0, 1, 2, 3 (0: plain data parallelism), not {stage!r}"
    if stage and (tp != 1 or pipeline):
        return (f"--zero {stage} shards over data-parallel ranks only: it does not combine with "
                f"--tp {tp} or a pipeline (--pp and its options); use --zero 0 there")
    return None


class Zero:
    """ZeRO stage 1, 2 or 3 of ``model`` over ``dp_comm``; ``step`` returns what
    ``DataParallel.step`` returns. ``optimizer``: an AdamW whose lr, betas, eps and weight
    decay it uses (the moments are this trainer's own, one block per group)."""

    def __init__(self, model, dp_comm, optimizer, *, stage, deterministic=False, max_norm=1.0,
                 overlap=True):
        problem = zero_problem(stage, model.tp.ways)
        if problem or stage == 0:
            raise ValueError(problem or "stage 0 is plain data parallelism: use DataParallel")
        self.model, self.comm, self.optimizer, self.stage = model, dp_comm, optimizer, stage
        self.deterministic, self.max_norm, self.overlap = deterministic, max_norm, overlap
        p, rank = dp_comm.Get_size(), dp_comm.Get_rank()
        self.layout = ZeroLayout(model, p)
        self.t = 0
        params = model.shards[0]
        self.full, self.shards = [], []  # stages 1-2: each group's flat parameters; this rank's block
        for g in self.layout.groups:
            flat = np.concatenate([params[name].reshape(-1) for name in g.names])
            mine = flat[g.split[rank]:g.split[rank + 1]]
            if stage < 3:
                self._install(flat, g)
                self.full.append(flat)
                self.shards.append(mine)  # a view: the update writes into the full copy
            else:
                self.shards.append(mine.copy())
                for name in g.names:
                    del params[name]
        self.m = [np.zeros_like(s) for s in self.shards]
        self.v = [np.zeros_like(s) for s in self.shards]
        self.grads = [None] * len(self.shards)
        self._index = {tuple(g.names): i for i, g in enumerate(self.layout.groups)}
        self.gather = LayerGather(model, dp_comm, self.layout, self.shards, overlap) if stage == 3 else None
        self._pending = []  # (group, RingReduceScatter) started during backward, not yet done
        self.peak_grad_bytes = 0

    def _install(self, flat, group):
        for name, shape, s, e in zip(group.names, group.shapes, group.starts, group.starts[1:]):
            self.model.shards[0][name] = flat[s:e].reshape(shape)

    def _reduce(self, gi, grads):
        """Group gi's gradients are final: sum them over the ranks, keep block r, drop the rest."""
        g = self.layout.groups[gi]
        flat = np.concatenate([grads[0][name].reshape(-1) for name in g.names])
        self._account(grads, flat.nbytes)
        for name in g.names:
            del grads[0][name]
        rank = self.comm.Get_rank()
        if self.overlap and self.stage >= 2 and not self.deterministic:
            tag = DEFAULT_TAG + 1 + len(self.layout.groups) + gi  # not a stage-3 gather's
            self._pending.append((gi, RingReduceScatter(self.comm, flat, tag=tag).start()))
        elif self.deterministic:
            summed = allreduce(self.comm, flat, algorithm="naive")
            for name, s, e in zip(g.names, g.starts, g.starts[1:]):
                self._squares[(0, name)] = float(np.vdot(summed[s:e], summed[s:e]))
            self.grads[gi] = summed[g.split[rank]:g.split[rank + 1]].copy()
        else:
            self.grads[gi] = reduce_scatter(self.comm, flat, algorithm="ring")

    def _account(self, grads, bucket):
        """The gradient bytes alive now: backward's whole ones, the group's flat copy being
        reduced (``bucket`` bytes), those of the reductions in flight and the blocks kept."""
        whole = sum(v.nbytes for v in grads[0].values())
        kept = sum(b.nbytes for b in self.grads if b is not None)
        flying = sum(ring.buf.nbytes for _, ring in self._pending)
        self.peak_grad_bytes = max(self.peak_grad_bytes, whole + bucket + flying + kept)

    def _hook(self, names, grads):
        self._reduce(self._index[tuple(names)], grads)
        self._collect(wait=False)

    def _collect(self, wait):
        """Keep the blocks of the reductions in flight that are done (all of them: ``wait``),
        dropping each group's flat copy."""
        still = []
        for gi, ring in self._pending:
            if wait:
                ring.wait()
            if ring.progress():
                self.grads[gi] = ring.result.copy()
            else:
                still.append((gi, ring))
        self._pending = still

    def sum_gradients(self, tokens, mask):
        """Forward and backward on this rank's slice of ``tokens``, the gradients summed over
        the ranks: afterwards ``self.grads[g]`` is this rank's block of group g's sum (before
        clipping). Returns (this rank's loss sum, seconds of backward, seconds of the sync)."""
        p, rank = self.comm.Get_size(), self.comm.Get_rank()
        local = batch_slice(tokens, rank, p)
        weights = loss_weights(mask, len(tokens), len(local), self.model.dtype)
        self._squares, self.grads = {}, [None] * len(self.shards)
        t0 = time.perf_counter()
        if self.gather:
            self.gather.begin_step()
        loss, _, grads = self.model.loss_and_grads(
            local[:, :-1], local[:, 1:], weights, on_layer_done=self._hook if self.stage >= 2 else None)
        if self.gather:
            self.gather.end_step()
        t_backward = time.perf_counter()
        self._collect(wait=True)
        if self.stage == 1:
            for names in self.model.grad_order():
                self._reduce(self._index[tuple(names)], grads)
        return loss, t_backward - t0, time.perf_counter() - t_backward

    def step(self, tokens, mask, lr=None):
        """Train on the global batch ``tokens`` (N, T+1); returns the step's figures."""
        t0 = time.perf_counter()
        loss, backward, sync = self.sum_gradients(tokens, mask)
        total = allreduce(self.comm, np.array([loss]), algorithm="naive")[0]
        norm = self._norm()
        scale = clip_scale(norm, self.max_norm)
        if scale is not None:
            for g in self.grads:
                g *= scale
        self._update(self.optimizer.lr if lr is None else lr)
        self.grads = [None] * len(self.shards)
        if self.stage < 3:
            self._gather_parameters()
        return dict(loss=float(total), grad_norm=norm, seconds=time.perf_counter() - t0,
                    backward_seconds=backward, sync_wait_seconds=sync, timeline=[])

    def _norm(self):
        if self.deterministic:
            return norm_from_squares(self.model.tp, self._squares, 1)
        mine = sum(float(np.dot(g64, g64)) for g64 in (g.astype(np.float64) for g in self.grads))
        return float(np.sqrt(allreduce(self.comm, np.array([mine]), algorithm="naive")[0]))

    def _update(self, lr):
        """AdamW on this rank's blocks; weight decay on the pieces that are matrices."""
        opt, rank = self.optimizer, self.comm.Get_rank()
        self.t += 1
        c1, c2 = 1 - opt.betas[0] ** self.t, 1 - opt.betas[1] ** self.t
        for gi, group in enumerate(self.layout.groups):
            p, g, m, v = self.shards[gi], self.grads[gi], self.m[gi], self.v[gi]
            for _, lo, hi, ndim in group.pieces(rank):
                adamw_update(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], lr, opt.betas, opt.eps,
                             opt.wd if ndim >= 2 else 0.0, c1, c2)

    def _gather_parameters(self):
        """Stages 1-2: every rank's updated blocks, gathered into every rank's full copy."""
        rank = self.comm.Get_rank()
        for gi, group in enumerate(self.layout.groups):
            flat = allgather(self.comm, self.shards[gi], algorithm="ring")
            self._install(flat, group)
            self.full[gi] = flat
            self.shards[gi] = flat[group.split[rank]:group.split[rank + 1]]

    def full_model(self):
        """The model with every parameter present (stage 3 gathers them until the next step)."""
        if self.gather:
            self.gather.gather_all()
        return self.model

    # --- accounting --------------------------------------------------------------------------

    def memory(self):
        """Bytes this rank holds, by the trainer's own count, beside the prediction."""
        rank, item = self.comm.Get_rank(), self.model.dtype.itemsize
        own = sum(s.nbytes for s in self.shards)
        held = dict(
            params=own if self.stage == 3 else sum(f.nbytes for f in self.full),
            grads=self.peak_grad_bytes,
            optimizer=sum(a.nbytes for a in (*self.m, *self.v)),
            gathered_peak=self.gather.peak_bytes if self.gather else 0)
        held["total"] = held["params"] + held["grads"] + held["optimizer"] + held["gathered_peak"]
        return dict(held=held, predicted=predicted_memory(self.stage, self.layout.numel,
                                                          self.layout.owned(rank), item))

    def predicted_bytes(self):
        """{op: bytes this rank sends in a step}: the groups' collectives and the two scalars
        (the loss; the norm, except in deterministic mode), all naive all-reduces."""
        p, rank = self.comm.Get_size(), self.comm.Get_rank()
        counts = gather_counts(self.gather.uses, len(self.layout.groups)) if self.gather else None
        out = predicted_step_bytes(self.layout, self.stage, rank, self.deterministic, counts,
                                   self.model.dtype.itemsize)
        scalars = 1 if self.deterministic else 2
        out["allreduce"] += scalars * naive_allreduce_bytes(1, rank, p, itemsize=8)  # float64
        return out
