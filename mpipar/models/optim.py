"""AdamW, clipping by global norm and the learning-rate schedule, for sharded and replicated
parameters alike.

AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Alg. 2):
    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr wd p
Weight decay applies to matrices only (not biases, LayerNorm gains), as in GPT-2
training practice. Every rank applies the same update to the same numbers, so
replicas stay bitwise identical.
"""
import numpy as np

from .params import is_sharded


class AdamW:
    """AdamW over a model's shards: updates ``model.shards`` in place."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01):
        self.model, self.lr, self.betas, self.eps, self.wd = model, lr, betas, eps, weight_decay
        self.t = 0
        self.m, self.v = {}, {}

    def step(self, grads, lr=None):
        """One update from ``grads`` (as loss_and_grads returns them)."""
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, shard_grads in enumerate(grads):
            for name, g in shard_grads.items():
                p = self.model.shards[k][name]
                key = (k, name)
                if key not in self.m:
                    self.m[key], self.v[key] = np.zeros_like(p), np.zeros_like(p)
                m, v = self.m[key], self.v[key]
                m *= b1
                m += (1 - b1) * g
                v *= b2
                v += (1 - b2) * g * g
                if self.wd and p.ndim >= 2:
                    p -= (lr * self.wd) * p
                p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def global_grad_norm(tp, grads):
    """sqrt(sum of every gradient element squared), each parameter counted once.

    Replicated gradients are the same on every tensor-parallel rank and counted
    once; the sharded ones are summed per shard and the shards' sums added with
    ``reduce_from_tp`` -- so every rank gets the same bits (in deterministic mode in
    fixed rank order). Accumulated in float64, names in sorted order.
    """
    replicated = sum(float(np.vdot(g, g)) for name, g in sorted(grads[0].items())
                     if not is_sharded(name))
    sharded = [np.array([sum(float(np.vdot(g, g)) for name, g in sorted(shard.items())
                             if is_sharded(name))]) for shard in grads]
    return float(np.sqrt(replicated + tp.reduce_from_tp(sharded)[0]))


def clip_grad_norm(tp, grads, max_norm):
    """Scale every gradient by min(1, max_norm / norm) in place; returns the norm before."""
    norm = global_grad_norm(tp, grads)
    if max_norm and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for shard in grads:
            for g in shard.values():
                g *= scale
    return norm


def learning_rate(step, steps, peak):
    """Linear warm-up over 100 steps (or a tenth of the run), then cosine decay to 0
    (Loshchilov & Hutter 2017, "SGDR", without restarts)."""
    warm = max(1, min(100, steps // 10))
    return peak * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / steps))
