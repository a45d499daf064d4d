"""Data parallelism: replicas of the model see different slices of the batch and add
their gradients, so every replica applies the same update.

With a fixed global batch of N examples split over dp ranks, the loss is

    L = (1 / n_pred) sum over all N examples of the masked token losses,

n_pred = predicted positions in the global batch. Each rank computes the
gradient of its own examples' part of that sum -- weights mask / n_pred, not its
local mean -- and the ranks SUM their gradients: exactly the gradient of one
process on the whole batch, for uneven shards too. (Averaging per-rank means is
the same only when every shard has the same size.) The data order depends only
on the seed, so a run's loss history does not depend on the process layout.

Gradient all-reduces overlap with backward (Li et al. 2020, "PyTorch Distributed",
sec. 3.2): gradients are grouped into buckets in the order backward produces them
(last layer first) and each bucket's ring all-reduce starts as soon as its last
gradient is ready (mpipar.parallel.buckets.GradBuckets): ``overlap="poll"`` advances the
rings between layers, ``"thread"`` on a communication thread while backward computes
(mpipar.collectives.progress), ``"none"`` runs them after backward -- the same bits in
all three. Deterministic mode instead adds
every gradient in fixed rank order (naive all-reduce: ((g_0 + g_1) + g_2) + ...),
which is what gradient accumulation over the same shards on one process computes
(``accumulated_grads``): the two are then bitwise equal.

``micro_batches=M`` accumulates gradients over M micro-batches per replica (memory for
the activations of 1/M of the shard): ``sync="each"`` all-reduces micro-batch m's buckets
while micro-batch m + 1 computes, ``sync="last"`` sums locally and all-reduces during the
last backward (DDP's ``no_sync``); see mpipar.parallel.dp_micro for when which pays.
"""
import time

import numpy as np

from ..collectives import allreduce
from ..collectives.progress import ProgressEngine
from ..models.optim import clip_grad_norm
from ..models.params import is_sharded
from ..tasks.addition import batch_slice
from .buckets import GradBuckets, overlap_mode
from .dp_micro import add_grads, bucket_hook, into_shards, micro_batches_problem, micro_step


def ready_order(model):
    """(key, shape) of this process's gradients in the order backward finishes them
    (``model.grad_order()``); key "k:name" is shard k's piece of parameter name."""
    out = []
    for group in model.grad_order():
        for name in group:
            for k, s in enumerate(model.shards):
                if k == 0 or is_sharded(name):
                    out.append((f"{k}:{name}", s[name].shape))
    return out


def loss_weights(mask, global_batch, local_batch, dtype):
    """Each predicted position's weight: mask / (predicted positions in the global batch)."""
    w = np.asarray(mask, np.float64) / (np.sum(mask) * global_batch)
    return np.broadcast_to(w.astype(dtype), (local_batch, len(mask)))


class DataParallel:
    """One training step of a (possibly tensor-parallel) model replicated over ``dp_comm``.

    ``overlap``: "poll" (or True), "thread" or "none" (or False), see GradBuckets, which
    also takes ``engine``, ``poll_seconds`` (thread mode) and ``in_flight`` (rings at once).
    ``micro_batches`` / ``sync``: gradient accumulation (module docstring; every rank must
    pass the same). ``close()`` (or ``with``) stops a communication thread the trainer
    started."""

    def __init__(self, model, dp_comm, optimizer, *, bucket_bytes=1 << 20, overlap=True,
                 deterministic=False, max_norm=1.0, engine=None, poll_seconds=None,
                 in_flight=None, micro_batches=1, sync="each"):
        problem = micro_batches_problem(micro_batches, 1, micro_batches, sync)
        if problem:
            raise ValueError(f"DataParallel: {problem}")
        self.model, self.comm, self.optimizer = model, dp_comm, optimizer
        self.deterministic, self.max_norm = deterministic, max_norm
        self.overlap, self.micro_batches, self.sync = overlap_mode(overlap), micro_batches, sync
        self.buckets = self.spare = self._engine = None
        if dp_comm.Get_size() > 1 and not deterministic:
            two = micro_batches > 1 and sync == "each" and self.overlap != "none"
            if two and self.overlap == "thread" and engine is None:  # one thread for both sets
                engine = self._engine = ProgressEngine()
            options = dict(dtype=model.dtype, overlap=self.overlap, engine=engine,
                           poll_seconds=poll_seconds, in_flight=in_flight)
            self.buckets = GradBuckets(dp_comm, ready_order(model), bucket_bytes, **options)
            if two:  # micro-batch m's buckets travel while m + 1 fills these
                self.spare = GradBuckets(dp_comm, ready_order(model), bucket_bytes, **options,
                                         first_tag=1 + len(self.buckets.buckets))  # own tags

    def close(self):
        for buckets in (self.buckets, self.spare):
            if buckets is not None:
                buckets.close()
        if self._engine is not None:
            self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def step(self, tokens, mask, lr=None):
        """Train on the global batch ``tokens`` (N, T+1); returns the step's figures."""
        p, rank = self.comm.Get_size(), self.comm.Get_rank()
        problem = micro_batches_problem(len(tokens), p, self.micro_batches, self.sync)
        if problem:  # the same numbers on every rank: the same error, before any message
            raise ValueError(f"DataParallel: {problem}")
        local = batch_slice(tokens, rank, p)
        t0 = time.perf_counter()
        if self.micro_batches > 1:
            parts = np.array_split(local, self.micro_batches)
            loss, grads, t_backward = micro_step(self, parts, [
                loss_weights(mask, len(tokens), len(part), self.model.dtype) for part in parts])
        else:
            weights = loss_weights(mask, len(tokens), len(local), self.model.dtype)
            if self.buckets is not None:
                self.buckets.reset()
            hook = bucket_hook(self.buckets) if self.buckets else None
            loss, _, grads = self.model.loss_and_grads(local[:, :-1], local[:, 1:], weights,
                                                       on_layer_done=hook)
            t_backward = time.perf_counter()
        if self.buckets is not None and self.micro_batches == 1:  # (micro_step sums its own)
            # the buckets' views, not a copy (475 MiB for GPT-2)
            into_shards(grads, self.buckets.finish(average=False))
        elif self.buckets is None and p > 1:  # deterministic: rank order, like accumulation on one process
            for shard_grads in grads:
                for g in shard_grads.values():
                    g[...] = allreduce(self.comm, g, algorithm="naive")
        t_synced = time.perf_counter()
        total = allreduce(self.comm, np.array([loss]), algorithm="naive")[0]
        norm = clip_grad_norm(self.model.tp, grads, self.max_norm)
        self.optimizer.step(grads, lr)
        t_end = time.perf_counter()
        return dict(loss=float(total), grad_norm=norm, seconds=t_end - t0,
                    backward_seconds=t_backward - t0, sync_wait_seconds=t_synced - t_backward,
                    timeline=self._last_buckets().timeline(t0) if self.buckets else [])

    def _last_buckets(self):
        """The buckets of the step's last all-reduce (micro-batches: the last one's set)."""
        if self.spare is not None and (self.micro_batches - 1) % 2:
            return self.spare
        return self.buckets


def accumulated_grads(model, tokens, mask, dp):
    """What ``dp`` data-parallel ranks compute, on one process: the gradients of each
    rank's shard, added in rank order (gradient accumulation). Returns (loss, grads)."""
    total_loss, total = 0.0, None
    for r in range(dp):
        local = batch_slice(tokens, r, dp)
        weights = loss_weights(mask, len(tokens), len(local), model.dtype)
        loss, _, grads = model.loss_and_grads(local[:, :-1], local[:, 1:], weights)
        total_loss = total_loss + loss if r else loss
        total = add_grads(total, grads)
    return total_loss, total
