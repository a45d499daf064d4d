"""Vocab-parallel cross-entropy (Megatron-LM, Shoeybi et al. 2019, sec. 3): no rank
ever holds the full logits.

Each shard holds the logits of its vocabulary slice. With the softmax written as
exp(z_j - M) / S, M = max_j z_j and S = sum_j exp(z_j - M), every rank needs only
three numbers per position from the others: the global max M (all-reduce MAX), the
sum S (all-reduce SUM) and the target's logit z_t (a masked pick, all-reduce SUM).
The loss of a position is log S - (z_t - M); its gradient on shard r's logits is
softmax_r - onehot_r, each rank computing its own slice.
"""
import numpy as np


def vocab_parallel_cross_entropy(tp, logit_parts, vocab_slices, targets, weights):
    """Weighted loss and the gradient of each shard's logits.

    logit_parts[k]: (B, T, V_k) logits of shard k; vocab_slices[k] its token range;
    targets: (B, T) token ids; weights: (B, T) weight of each position's loss
    (e.g. mask / number of predicted positions in the global batch).
    Returns (sum of weights * loss as a float64 scalar, per-position loss (B, T),
    [d sum / d logit_parts[k]]).
    """
    M = tp.max_from_tp([z.max(-1) for z in logit_parts])
    exps = [np.exp(z - M[..., None]) for z in logit_parts]
    S = tp.reduce_from_tp([e.sum(-1) for e in exps])
    picked = []
    for z, v in zip(logit_parts, vocab_slices):
        mine = (targets >= v.start) & (targets < v.stop)
        local = np.take_along_axis(z, np.where(mine, targets - v.start, 0)[..., None], -1)[..., 0]
        picked.append(np.where(mine, local, 0).astype(z.dtype))
    z_target = tp.reduce_from_tp(picked)
    losses = np.log(S) - (z_target - M)
    grads = []
    for e, v in zip(exps, vocab_slices):
        g = e / S[..., None]
        mine = (targets >= v.start) & (targets < v.stop)
        b, t = np.nonzero(mine)
        g[b, t, targets[b, t] - v.start] -= 1
        grads.append(g * weights[..., None].astype(g.dtype))
    total = float(np.sum(losses.astype(np.float64) * weights))
    return total, losses, grads
