"""Gradient accumulation over micro-batches in data parallelism, two ways of summing.

Each replica's share of the global batch is cut into M micro-batches (``np.array_split``:
sizes differ by at most one); micro-batch m's loss weights are still mask / (predicted
positions in the GLOBAL batch), so the micro-batches' gradients simply add up to the
replica's, for uneven splits too.

``sync="each"``: every micro-batch's gradient buckets are all-reduced while the NEXT
micro-batch's forward and backward compute (polled between its layers, or on the
communication thread), on two alternating sets of buckets; micro-batch m - 1's are waited
for after micro-batch m's backward and added to the sum, so the only wait left before
the optimizer step is the last micro-batch's. The gradient is the sum, in micro-batch
order, of the all-reduced micro-batch gradients. This sends M times the bytes of summing
locally first: it pays where the network is idle during compute anyway and one
micro-batch's compute hides its all-reduce -- the all-reduce of the whole gradient then
costs nothing but the last micro-batch's tail -- and loses where bandwidth is the limit
(M full all-reduces instead of one). It also needs a second set of buckets.

``sync="last"``: the first M - 1 micro-batches add their gradients locally, with no
message; the last micro-batch's backward adds its gradient to that sum as each layer
finishes and starts the buckets' all-reduces as usual (overlapped with the last
backward only). This is PyTorch DDP's ``no_sync`` context (Li et al. 2020, "PyTorch
Distributed", sec. 3.2, gradient accumulation): one all-reduce per step, the fewest bytes.

Both are the same mathematics as the whole batch; they add the same terms in other
orders (micro-batch, then rank, or rank within each micro-batch), so the result differs
from the whole batch's by rounding only, and each is bitwise the same in the
overlap modes none, poll and thread (the same rings, the same additions).
"""
import time

import numpy as np

SYNCS = ("each", "last")  #: reduce every micro-batch's buckets; sum locally, reduce the last


def micro_batches_problem(n_examples, p, m, sync):
    """Why a global batch of ``n_examples`` over ``p`` replicas cannot be cut into ``m``
    micro-batches each, or None. It depends only on numbers every rank shares, so every
    rank raises the same error before any message."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        return f"micro_batches must be a whole number >= 1, not {m!r}"
    if sync not in SYNCS:
        return f"sync must be one of {', '.join(SYNCS)}, not {sync!r}"
    smallest = n_examples // p
    if m > smallest:
        return (f"micro_batches={m} exceeds the {smallest} examples the smallest replica gets "
                f"(batch {n_examples} over dp = {p}): a larger batch or fewer micro-batches")
    return None


def add_grads(total, grads):
    """``total`` += ``grads`` (lists of per-shard dicts); the first call keeps ``grads``."""
    if total is None:
        return grads
    for acc, g in zip(total, grads):
        for name in acc:
            acc[name] += g[name]
    return total


def micro_step(dp, parts, weights):
    """Forward and backward of every micro-batch (``parts``, their ``weights``) with the
    gradient sum of ``dp.sync``; returns (this rank's loss sum, grads summed over the ranks
    unless ``dp.buckets`` is None -- then only over the micro-batches -- and perf_counter()
    at the end of the last backward)."""
    model, loss_total, total = dp.model, 0.0, None
    sets = [s for s in (dp.buckets, dp.spare) if s is not None]
    for m, (part, w) in enumerate(zip(parts, weights)):
        last = m == len(parts) - 1
        hook = None
        if sets and dp.sync == "each":
            current, before = sets[m % len(sets)], sets[(m - 1) % len(sets)]
            current.reset()
            hook = bucket_hook(current, before if m and before is not current else None)
        elif sets and last:  # sync="last": the local sum goes into the buckets layer by layer
            hook = _last_hook(sets[0], total)
        loss, _, grads = model.loss_and_grads(part[:, :-1], part[:, 1:], w, on_layer_done=hook)
        loss_total += float(loss)  # float64: M terms, the same order in every mode
        t_backward = time.perf_counter()
        if not sets:
            total = add_grads(total, grads)
        elif dp.sync == "last":
            if last:
                total = into_shards(grads, sets[0].finish(average=False))
            else:
                total = add_grads(total, grads)
        else:
            if m and before is not current:  # the previous micro-batch's, travelled meanwhile
                total = _sum_reduced(total, before.finish(average=False))
            if before is current or last:
                total = _sum_reduced(total, current.finish(average=False))
    if sets and dp.sync == "each":
        total = into_shards(grads, total)
    return loss_total, total, t_backward


def bucket_hook(current, before=None):
    """The hook backward calls after each layer: its gradients into ``current``'s buckets, then
    both sets' rings moved on (``before``: the previous micro-batch's, still travelling)."""
    def hook(names, grads):
        for name in names:
            for k, g in enumerate(grads):
                if name in g:
                    current.ready(f"{k}:{name}", g[name])
        current.progress()
        if before is not None:
            before.progress()
    return hook


def _last_hook(buckets, total):
    buckets.reset()

    def hook(names, grads):
        for name in names:
            for k, g in enumerate(grads):
                if name in g:
                    key = f"{k}:{name}"
                    if total is None:  # one micro-batch: nothing summed before
                        buckets.ready(key, g[name])
                        continue
                    np.add(total[k][name], g[name], out=buckets.view(key))
                    buckets.ready(key)
        buckets.progress()
    return hook


def _sum_reduced(total, reduced):
    """Add one micro-batch's all-reduced buckets ({key: view}) to ``total`` ({key: array})."""
    if total is None:
        return {key: g.copy() for key, g in reduced.items()}
    for key, g in reduced.items():
        total[key] += g
    return total


def into_shards(grads, summed):
    """Put {"k:name": gradient} into the model's per-shard dicts ``grads``."""
    for key, g in summed.items():
        k, name = key.split(":", 1)
        grads[int(k)][name] = g
    return grads
