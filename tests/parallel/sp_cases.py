"""What the sequence-parallel tests share: a training case with uneven blocks of positions, the
gradients' summation bound, and the adjoint check of the two sequence-parallel operators.

The bound. With sequence parallelism a replicated parameter's gradient is a sum over the
n = B T positions of terms t_i (LayerNorm: dy_i xhat_i and dy_i; a row-parallel bias: dy_i),
added block by block and then over the blocks; without it, over all positions at once. In
deterministic mode the terms are the same bits in both (the input gradients are: the sharded
parameters' gradients, built from them, are bitwise equal), so only the order of adding
differs. Any order of adding n terms lies within gamma_{n-1} sum |t_i| of the exact sum
(Higham 2002, eq. 4.4), so the two within 2 gamma_{n-1} sum |t_i| of each other.
"""
import numpy as np

from mpipar.measure import numerics
from mpipar.models import PRESETS, layers, linear
from mpipar.models.params import is_sharded

TINY = PRESETS["tiny"]  # 4 heads, d = 48, 2 layers


def case(batch=3, length=8, seed=1):
    """(inputs, targets, weights): T = length - 1 = 7 positions, uneven over 2, 3 and 4 ranks."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, TINY.vocab_size, (batch, length))
    return tok[:, :-1], tok[:, 1:], rng.random((batch, length - 1)).astype(np.float32)


def gamma(n, dtype=np.float32):
    u = numerics.unit_roundoff(dtype)
    return n * u / (1 - n * u)


def replicated_names(grads):
    return sorted(n for n in grads[0] if not is_sharded(n))


def term_scales(model, monkeypatch, data):
    """Run ``model.loss_and_grads(*data)`` (without sequence parallelism) and return, per
    replicated LayerNorm and row-parallel bias, sum over positions of |t_i| in float64."""
    calls = {"norm": [], "bias": []}
    norm_backward, output_backward = layers.layer_norm_backward, linear.row_output_backward

    def norm(x, w, dy, eps):
        x64, dy64 = x.astype(np.float64), np.abs(dy.astype(np.float64))
        c = x64 - x64.mean(-1, keepdims=True)
        xhat = c / np.sqrt((c * c).mean(-1, keepdims=True) + eps)
        calls["norm"].append(((dy64 * np.abs(xhat)).reshape(-1, x.shape[-1]).sum(0),
                              dy64.reshape(-1, x.shape[-1]).sum(0)))
        return norm_backward(x, w, dy, eps)

    def output(tp, dy):
        calls["bias"].append(np.abs(dy.astype(np.float64)).reshape(-1, dy.shape[-1]).sum(0))
        return output_backward(tp, dy)

    monkeypatch.setattr(layers, "layer_norm_backward", norm)
    monkeypatch.setattr(linear, "row_output_backward", output)
    out = model.loss_and_grads(*data)
    monkeypatch.undo()
    # the order backward meets them: ln_f, then each block from the last: its MLP's c_proj,
    # ln_2, attention's c_proj, ln_1; the last row_output_backward is the embedding's
    scales, norms, biases = {}, iter(calls["norm"]), iter(calls["bias"])
    scales["ln_f.weight"], scales["ln_f.bias"] = next(norms)
    for i in reversed(range(model.config.n_layer)):
        h = f"h.{i}."
        scales[h + "mlp.c_proj.bias"] = next(biases)
        scales[h + "ln_2.weight"], scales[h + "ln_2.bias"] = next(norms)
        scales[h + "attn.c_proj.bias"] = next(biases)
        scales[h + "ln_1.weight"], scales[h + "ln_1.bias"] = next(norms)
    return out, scales


def check_replicated_against_tp(sp_grads, tp_grads, scales, n):
    """The replicated gradients of a sequence-parallel run within 2 gamma_{n-1} sum |t| of tensor
    parallelism's (see above); wpe's bitwise (each position's rows come from one block only).
    Returns the largest error in units of u sum |t|."""
    worst = 0.0
    for name in replicated_names(tp_grads):
        got, want = sp_grads[0][name], tp_grads[0][name]
        if name == "wpe.weight":
            assert np.array_equal(got, want), name
            continue
        err = np.abs(got.astype(np.float64) - want)
        assert np.all(err <= 2 * gamma(n - 1) * scales[name] * (1 + 1e-4) + 1e-30), name
        worst = max(worst, float(np.max(err / (numerics.unit_roundoff(np.float32) * scales[name]
                                                + 1e-30))))
    return worst


def sp_adjoint_gaps(tp, seed=0):
    """<op(x), y> - <x, op_backward(y)> summed over every shard of ``tp`` for gather_from_sp and
    reduce_scatter_to_sp (axis 1, 7 positions: uneven blocks): exactly 0 when each backward is
    its forward's adjoint. Integer-valued float64 keeps every sum exact."""
    rng = np.random.default_rng(seed)  # the same draws on every rank
    full = [rng.integers(-9, 10, (2, 7, 3)).astype(np.float64) for _ in range(tp.ways + 1)]
    y, per_shard = full[0], full[1:]
    mine = [per_shard[r] for r in tp.shard_ids]
    blocks = [b[:, s] for b, s in zip(mine, tp.sequence_slices(7))]  # each shard's positions

    def over_shards(pairs):
        return tp.comm.allreduce(sum(float(np.vdot(a, b)) for a, b in pairs))

    y_blocks = [y[:, s] for s in tp.sequence_slices(7)]
    gathered = tp.gather_from_sp(blocks)  # the same on every shard
    return {
        "gather_from_sp": over_shards((gathered, yk) for yk in mine)
        - over_shards(zip(blocks, tp.gather_from_sp_backward(mine))),
        "reduce_scatter_to_sp": over_shards(zip(tp.reduce_scatter_to_sp(mine), y_blocks))
        - over_shards((m, tp.reduce_scatter_to_sp_backward(y_blocks)) for m in mine),
    }
