"""Megatron-LM's tensor-parallel layers, each forward beside its backward (Shoeybi et al. 2019, sec. 3).

    column_parallel   y_k = x W_k + b_k     W's columns split; f (copy_to_tp) before it
    row_parallel      y = sum_k x_k W_k + b  W's rows split; g (reduce_from_tp) after it
    vocab_parallel_embedding / lm_head   the token embedding's rows split by vocabulary

A layer takes the TPGroup ``tp``, the shards this process computes (dicts of
parameters, ``GPT.shards``) and a parameter's name (``name + ".weight"``); lists
hold one array per shard. In backward f and g trade places: the input gradient of a
column-parallel layer is all-reduced (``copy_to_tp_backward``) and a row-parallel
layer's output gradient reaches every shard whole (``reduce_from_tp_backward``).
Gradients go into ``grads`` (one dict per shard); those of replicated parameters --
the bias of a row-parallel layer, added once after the sum -- into ``grads[0]`` only.
A layer whose table has no ``name + ".bias"`` row (Llama's) is ``x W`` alone.

With sequence parallelism (Korthikanti et al. 2022, sec. 4.2.2; ``tp.sequence_parallel``)
the replicated input of a column-parallel layer arrives as blocks of positions and is
all-gathered instead of f (``column_input``); a row-parallel layer's sum is
reduce-scattered into blocks instead of g (``row_output``), its bias added to each block
and its bias gradient a per-block sum, into ``grads[k]`` of every shard (summed over the
group by the model). A column-parallel layer keeps its input as the blocks, 1/p of the
activation, and backward all-gathers them again -- the paper's choice of memory over bytes.

A column-parallel backward computes its input gradient's parts first and reduces them while it
computes the weight gradients: on a communication thread where the group has an engine
(``tp.engine``; Megatron-LM's asynchronous linear, see mpipar.parallel.tp_async), with the
same bits as without one.
"""
import numpy as np

from ..measure.op_profile import matmul, timed


def _flat(a):
    """(..., n) -> (rows, n): the batch and time axes as one."""
    return a.reshape(-1, a.shape[-1])


class DeferredGrads(list):
    """Gradient dicts (one per shard) whose weight gradients wait: a backward pass into them
    computes every input gradient and the cheap bias and norm gradients at once, but only
    records each matrix's x^T dy; ``finish()`` computes them later. This is the split of
    backward into B (input gradients) and W (weight gradients) that zero-bubble pipeline
    schedules move into the bubble (Qi et al. 2024, "Zero Bubble Pipeline Parallelism",
    sec. 2). The numbers are the same bits as an undeferred backward's."""

    def __init__(self, n_shards):
        super().__init__({} for _ in range(n_shards))
        self.waiting = []  #: (shard, key, x, dy) of every weight gradient not yet computed

    def finish(self):
        """Compute every waiting weight gradient; returns self."""
        for k, key, x, dy in self.waiting:
            if key in self[k]:  # a tied weight's second use must go into a dict of its own
                raise RuntimeError(f"the gradient of {key} was already computed")
            self[k][key] = _flat(x).T @ _flat(dy)
        self.waiting.clear()
        return self


def weight_grad(grads, k, key, x, dy):
    """grads[k][key] = x^T dy over the flattened batch and time axes: now, or at
    ``grads.finish()`` if ``grads`` is a DeferredGrads."""
    if isinstance(grads, DeferredGrads):
        grads.waiting.append((k, key, x, dy))
    else:
        grads[k][key] = _flat(x).T @ _flat(dy)


def _plus_bias(y, s, name):
    """y + the bias of layer ``name`` in shard s, or y where the layer has none."""
    bias = s.get(name + ".bias")
    if bias is not None:
        y += bias  # in place: y is the product just computed, nobody else holds it
    return y


def column_input(tp, x):
    """The input every shard of a column-parallel layer reads: f (the identity) of x, or with
    sequence parallelism the blocks of x all-gathered along the sequence."""
    return tp.gather_from_sp(x) if tp.sequence_parallel else tp.copy_to_tp(x)


def column_input_backward(tp, parts):
    """``column_input``'s backward: the shards' input gradients summed -- all-reduced (f's
    backward), or with sequence parallelism reduce-scattered into blocks of positions."""
    return tp.gather_from_sp_backward(parts) if tp.sequence_parallel else tp.copy_to_tp_backward(parts)


def column_input_backward_start(tp, parts, what, overlap=True):
    """``column_input_backward`` started: on the group's communication thread where it has one
    (``tp.async_backward``), else at once; ``.wait()`` gives the result. The same reduction,
    so the same bits (see mpipar.parallel.tp_async)."""
    fn = tp.gather_from_sp_backward if tp.sequence_parallel else tp.copy_to_tp_backward
    return tp.start(fn, parts, what, overlap)


def row_output(tp, partials):
    """The sum of the shards' partial outputs: all-reduced (g), or with sequence parallelism
    reduce-scattered into blocks of positions. The partials are the caller's fresh arrays: the
    sum may be built in them."""
    if tp.sequence_parallel:
        return tp.reduce_scatter_to_sp(partials)
    return tp.reduce_from_tp(partials, owned=True)


def row_output_backward(tp, dy):
    """``row_output``'s backward: the whole output gradient on every shard -- the identity (g's
    backward), or with sequence parallelism the blocks all-gathered."""
    return tp.reduce_scatter_to_sp_backward(dy) if tp.sequence_parallel else tp.reduce_from_tp_backward(dy)


def column_matmul(shards, name, x):
    """Each shard's block of output columns, x W_k + b_k, of the input x every shard reads."""
    return [_plus_bias(matmul(x, s[name + ".weight"]), s, name) for s in shards]


def column_parallel(tp, shards, name, x):
    """Each shard's block of output columns, x W_k + b_k, from the same input x."""
    return column_matmul(shards, name, column_input(tp, x))


def column_parallel_backward(tp, shards, name, x, dys, grads):
    """dW_k = x^T dy_k, db_k = sum dy_k; the input gradient sum_k dy_k W_k^T (f's backward).

    The input gradient's parts come first and their reduction starts (on the group's
    communication thread, if it has one) before the weight and bias gradients are computed:
    Megatron-LM's asynchronous column-parallel backward (mpipar.parallel.tp_async)."""
    if tp.sequence_parallel:  # kept as blocks: gathered again
        x = tp.gather_from_sp(x)
    parts = [dy @ s[name + ".weight"].T for s, dy in zip(shards, dys)]
    reduction = column_input_backward_start(tp, parts, name, _overlaps(grads))
    for k, (s, dy) in enumerate(zip(shards, dys)):
        weight_grad(grads, k, name + ".weight", x, dy)
        if name + ".bias" in s:
            grads[k][name + ".bias"] = _flat(dy).sum(0)
    return reduction.wait()


def _overlaps(grads):
    """Whether weight gradients are computed now, for a reduction to overlap with (deferred
    ones leave nothing to hide it behind: it runs at once)."""
    return not isinstance(grads, DeferredGrads)


def row_parallel(tp, shards, name, xs):
    """sum_k x_k W_k over the shards (g), then the bias once (on each block of positions)."""
    partials = [matmul(x, s[name + ".weight"]) for s, x in zip(shards, xs)]
    return tp.per_block(lambda y: _plus_bias(y, shards[0], name), row_output(tp, partials))


def row_parallel_backward(tp, shards, name, xs, dy, grads):
    """dW_k = x_k^T dy, db = sum dy (replicated: grads[0]; with sequence parallelism each block's
    sum in grads[k]); each shard's input gradient dy W_k^T."""
    if name + ".bias" in shards[0]:
        if tp.sequence_parallel:
            for k, d in enumerate(dy):
                grads[k][name + ".bias"] = _flat(d).sum(0)
        else:
            grads[0][name + ".bias"] = _flat(dy).sum(0)
    dy = row_output_backward(tp, dy)
    dxs = []
    for k, (s, x) in enumerate(zip(shards, xs)):
        weight_grad(grads, k, name + ".weight", x, dy)
        dxs.append(dy @ s[name + ".weight"].T)
    return dxs


def _mine(s, tokens):
    """Which ``tokens`` fall in shard ``s``'s vocabulary slice."""
    return (tokens >= s["vocab"].start) & (tokens < s["vocab"].stop)


@timed("embedding")
def lookup(s, name, tokens):
    """Shard ``s``'s part of the embedding of ``tokens``: the rows of the tokens it owns,
    zeros for the others."""
    mine = _mine(s, tokens)
    if mine.all():  # the whole vocabulary is here (one shard): a plain lookup
        return s[name][tokens - s["vocab"].start]
    rows = s[name][np.where(mine, tokens - s["vocab"].start, 0)]
    rows[~mine] = 0  # in place: no second array of the output's size
    return rows


def vocab_parallel_embedding(tp, shards, name, tokens):
    """Rows of the embedding ``name``: each shard looks up the tokens it owns (zeros for the
    others) and g adds the shards' parts -- one all-reduce (``row_output``)."""
    return row_output(tp, [lookup(s, name, tokens) for s in shards])


def vocab_parallel_embedding_backward(tp, shards, name, tokens, dx, grads):
    """Each shard adds the rows of dx to the rows of the tokens it owns (g's backward: all of
    dx on every shard), into ``grads[k][name]`` -- where the tied LM head's gradient already is."""
    dx = row_output_backward(tp, dx)
    for k, s in enumerate(shards):
        mine = _mine(s, tokens)
        if name not in grads[k]:
            grads[k][name] = np.zeros_like(s[name])
        np.add.at(grads[k][name], tokens[mine] - s["vocab"].start, dx[mine])


def lm_head(tp, shards, name, x):
    """Each shard's slice of the logits, x @ its rows of the (tied) embedding ``name``, transposed."""
    x = column_input(tp, x)
    return [matmul(x, s[name].T) for s in shards]


def lm_head_backward(tp, shards, name, x, dparts, grads):
    """d emb_k = dz_k^T x, and the input gradient sum_k dz_k emb_k (f's backward)."""
    if tp.sequence_parallel:  # kept as blocks: gathered again
        x = tp.gather_from_sp(x)
    reduction = column_input_backward_start(tp, [dz @ s[name] for s, dz in zip(shards, dparts)],
                                            "lm_head", _overlaps(grads))
    for k, dz in enumerate(dparts):  # while the input gradient travels, as column_parallel's
        weight_grad(grads, k, name, dz, x)
    return reduction.wait()
