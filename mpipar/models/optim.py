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
                adamw_update(p, g, self.m[key], self.v[key], lr, self.betas, self.eps,
                             self.wd if p.ndim >= 2 else 0.0, c1, c2)

    def state_bytes(self):
        """Bytes of the moments m and v this optimizer holds."""
        return sum(a.nbytes for a in (*self.m.values(), *self.v.values()))


BLOCK = 1 << 14  #: elements per block of adamw_update: 64 KiB of float32, four arrays in cache


def adamw_update(p, g, m, v, lr, betas, eps, wd, c1, c2):
    """One AdamW update of ``p`` in place from ``g``, moments ``m``, ``v`` (updated too), weight
    decay ``wd`` (0: none), bias corrections c1 = 1 - b1^t, c2 = 1 - b2^t. Elementwise: a
    slice of p, g, m and v updated alone gets the same bits as inside the whole array.

    Why blocks: written on whole arrays, the update makes ten temporaries the size of p,
    each a pass over memory (GPT-2 small: 475 MiB each, 1.5 s a step on one core). Done
    BLOCK elements at a time into two scratch buffers, the operands stay in cache -- the
    same operations in the same order, so the same bits (tests/models/test_optim.py)."""
    arrays = (p, g, m, v)
    if any(a.dtype != p.dtype for a in arrays):  # NumPy's promotions decide: the formula as written
        return adamw_whole_arrays(p, g, m, v, lr, betas, eps, wd, c1, c2)
    if not all(a.flags.c_contiguous for a in arrays):  # strided views: scratch of their shape
        return _adamw_block(p, g, m, v, lr, betas, eps, wd, c1, c2, np.empty_like(p), np.empty_like(p))
    flat = [a.reshape(-1) for a in arrays]  # views: the blocks update p, m and v in place
    n = min(BLOCK, p.size)
    scratch = np.empty(n, p.dtype), np.empty(n, p.dtype)
    for start in range(0, p.size, BLOCK):
        block = [a[start:start + BLOCK] for a in flat]
        k = len(block[0])
        _adamw_block(*block, lr, betas, eps, wd, c1, c2, scratch[0][:k], scratch[1][:k])


def adamw_whole_arrays(p, g, m, v, lr, betas, eps, wd, c1, c2):
    """Loshchilov & Hutter 2019, Alg. 2, written on whole arrays (one temporary per operation):
    what :func:`adamw_update` computes block by block, and its path for mixed dtypes."""
    b1, b2 = betas
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    if wd:
        p -= (lr * wd) * p
    p -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


def _adamw_block(p, g, m, v, lr, betas, eps, wd, c1, c2, a, b):
    """Alg. 2's update with the scratch arrays a and b (p's shape) for its temporaries:
    m = b1 m + (1 - b1) g;  v = b2 v + ((1 - b2) g) g;  p -= (lr wd) p;
    p -= (lr (m / c1)) / (sqrt(v / c2) + eps)."""
    b1, b2 = betas
    m *= b1
    np.multiply(g, 1 - b1, out=a)
    m += a
    v *= b2
    np.multiply(g, 1 - b2, out=a)
    a *= g
    v += a
    if wd:
        np.multiply(p, lr * wd, out=a)
        p -= a
    np.divide(m, c1, out=a)
    a *= lr
    np.divide(v, c2, out=b)
    np.sqrt(b, out=b)
    b += eps
    a /= b
    p -= a


def global_grad_norm(tp, grads):
    """sqrt(sum of every gradient element squared), each parameter counted once.

    Replicated gradients are the same on every tensor-parallel rank and counted
    once; the sharded ones are summed per shard and the shards' sums added with
    ``reduce_from_tp`` -- so every rank gets the same bits (in deterministic mode in
    fixed rank order). Each sum of squares is np.vdot in the gradient's dtype; the terms
    are added as Python floats, names in sorted order.
    """
    return norm_from_squares(tp, square_sums(grads), len(grads))


def square_sums(grads):
    """{(k, name): sum of gradient grads[k][name] squared} -- replicated ones from shard 0 only."""
    return {(k, name): float(np.vdot(g, g)) for k, shard in enumerate(grads)
            for name, g in shard.items() if k == 0 or is_sharded(name)}


def norm_from_squares(tp, squares, n_shards):
    """The global norm from ``square_sums``' terms (which may come from pieces of several
    trainers, see mpipar.parallel.zero): replicated names first, in sorted order, then each
    shard's sharded names in sorted order, added across shards by ``reduce_from_tp``."""
    terms = sorted(squares.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    replicated = sum(v for (k, name), v in terms if k == 0 and not is_sharded(name))
    sharded = [np.array([sum(v for (k2, name), v in terms if k2 == k and is_sharded(name))])
               for k in range(n_shards)]
    return float(np.sqrt(replicated + tp.reduce_from_tp(sharded)[0]))


def clip_scale(norm, max_norm):
    """The factor clipping multiplies every gradient by: min(1, max_norm / norm), None for 1."""
    return max_norm / (norm + 1e-6) if max_norm and norm > max_norm else None


def clip_grad_norm(tp, grads, max_norm):
    """Scale every gradient by min(1, max_norm / norm) in place; returns the norm before."""
    norm = global_grad_norm(tp, grads)
    scale = clip_scale(norm, max_norm)
    if scale is not None:
        for shard in grads:
            for g in shard.values():
                g *= scale
    return norm


def learning_rate(step, steps, peak):
    """Linear warm-up over 100 steps (or a tenth of the run), then cosine decay to 0
    (Loshchilov & Hutter 2017, "SGDR", without restarts)."""
    warm = max(1, min(100, steps // 10))
    return peak * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / steps))
