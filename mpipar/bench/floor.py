"""The BLAS floor of a forward pass: its matrix products alone, replayed back to back.

    with OpProfile(persistent=model_arrays(model)) as prof:   # one forward, its products described
        model.forward(tokens)
    replay = Replay(prof.products)
    figures = time_call(comm, replay, trials=5)               # seconds of the products alone
    replay.nbytes                                             # what they read

A forward does other work besides its matrix products (norms, softmax, GELU, adds,
Python); the products alone, at the same shapes and layouts, on the same number of BLAS
threads, are the least any NumPy forward of this model could take: its *floor*. The
ratio forward / floor says how much time goes elsewhere (1.0: none).

Each recorded product is run again with operands of the same shape, strides and dtype --
what decides the BLAS call (transposition flags, leading dimensions, gemm or gemv) -- so
a product that read a transposed or strided view is replayed reading one. A parameter
operand is the parameter itself, the very bytes the forward read; an activation is fresh
memory of the same layout (filled with N(0, 1) numbers, as values do not change a
product's time), one buffer per layout, reused as the forward reuses its cache-warm
activations.

Decoding one token multiplies each weight matrix by one vector: a product that reads
every weight once and computes 2 flops per weight, so it is bound by memory bandwidth,
not arithmetic. ``nbytes`` (the operands' bytes) / floor seconds is the bandwidth the
products reach: against the machine's memory bandwidth it says how close the floor
itself is to the hardware's.
"""
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided


def fresh(op, rng):
    """An array of ``op``'s shape, strides and dtype over new memory, filled with N(0, 1)."""
    if any(s < 0 for s in op.strides):
        raise ValueError("cannot replay an operand with negative strides")
    if 0 in op.shape:
        return np.empty(op.shape, op.dtype)
    # the last byte the view touches, +1 element: how much memory the strides span
    span = sum((n - 1) * s for n, s in zip(op.shape, op.strides)) // op.dtype.itemsize + 1
    memory = rng.standard_normal(span).astype(op.dtype)
    return as_strided(memory, op.shape, op.strides)


class Replay:
    """The recorded products as a call: each run computes every one of them once, in order.

    ``products``: ``OpProfile.products`` ((Operand, Operand) pairs). ``nbytes``: bytes of
    every operand of every product (what one run reads at least once); ``flops``: 2 m n k
    summed over the products.
    """

    def __init__(self, products, seed=0):
        rng, buffers = np.random.default_rng(seed), {}
        self.pairs, self.nbytes, self.flops = [], 0, 0
        for a, b in products:
            arrays = []
            for op in (a, b):
                if op.array is not None:
                    arrays.append(op.array)
                    continue
                key = (op.shape, op.strides, op.dtype.str)
                if key not in buffers:
                    buffers[key] = fresh(op, rng)
                arrays.append(buffers[key])
            self.pairs.append(tuple(arrays))
            self.nbytes += a.nbytes + b.nbytes
            self.flops += 2 * flop_count(a.shape, b.shape)

    def __call__(self):
        for a, b in self.pairs:
            a @ b

    def seconds_each(self):
        """One run, each product on its own clock: a list of (a shape, b shape, seconds)."""
        out = []
        for a, b in self.pairs:
            t0 = time.perf_counter()
            a @ b
            out.append((a.shape, b.shape, time.perf_counter() - t0))
        return out


def flop_count(shape_a, shape_b):
    """Multiply-adds of a @ b (numpy's matmul: batch axes broadcast, a 1-D operand a vector)."""
    a, b = tuple(shape_a), tuple(shape_b)
    if len(a) == 1:
        a = (1,) + a
    if len(b) == 1:
        b = b + (1,)
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return int(np.prod(batch, dtype=np.int64)) * a[-2] * a[-1] * b[-1]
