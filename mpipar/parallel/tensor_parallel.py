"""Megatron-style tensor parallelism: who owns which slice, and the four conjugate operators.

Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models
Using Model Parallelism" (2019), sec. 3. A weight matrix is split either

* by columns (column-parallel): Y = X [A_1 .. A_p] = [X A_1 .. X A_p]. Each rank
  computes its block of output columns exactly; nothing is summed across ranks.
* by rows (row-parallel): Y = [X_1 .. X_p] [B_1; ..; B_p] = sum_r X_r B_r. Each
  rank computes a partial sum; an all-reduce adds them -- in an order that differs
  from one serial matmul, hence last-bit differences (deterministic mode fixes
  the order).

The MLP pairs them: column-parallel c_fc, GELU locally, row-parallel c_proj --
one all-reduce per MLP. Attention splits by heads the same way.

Operators, each method beside its backward (the conjugate, used by training):
    copy_to_tp      f: identity forward             copy_to_tp_backward: all-reduce
    reduce_from_tp  g: all-reduce forward           reduce_from_tp_backward: identity
    gather_from_tp  all-gather the blocks forward   gather_from_tp_backward: keep this rank's block
    scatter_to_tp   keep this rank's block forward  scatter_to_tp_backward: all-gather
f sits where a column-parallel layer reads its input, g where a row-parallel layer
sums its partial outputs: in backward each turns into the other.

Sequence parallelism (Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", sec. 4.2.2) cuts the regions that f and g leave replicated
(norms, residual adds, the embedding's output) along the sequence: each shard holds
the positions ``split(T, p, r)`` of (B, T, d) -- a list of blocks, one per shard this
process computes. Two more conjugate operators replace f and g there:
    gather_from_sp        all-gather the positions forward     gather_from_sp_backward: reduce-scatter
    reduce_scatter_to_sp  reduce-scatter the partial sums      reduce_scatter_to_sp_backward: all-gather
An all-reduce is a reduce-scatter followed by an all-gather (the ring all-reduce is
literally both), so the pair moves the bytes g did, while every activation between
them is 1/p as large. Parameters replicated over the group (norm gains and biases,
row-parallel biases, positions) now see different positions on each shard: their
gradients are summed over the group (``reduce_from_tp``), the one gradient tensor
parallelism ever communicates.

A ``TPGroup`` is the communicator plus the shards this process computes. On p
ranks each rank holds one shard. On one process it may hold all p shards of a
p-way split: that *emulates* p ranks -- the same blocks, the same matmul shapes,
the same reduction order -- and is how the serial reference reproduces a
parallel run bit for bit (deterministic mode).

Why emulate rather than compare with one big matmul: the BLAS picks kernels and
blocking by matrix shape and by its thread count, so even ``x @ W[:, cols]`` can
differ in the last bits from ``(x @ W)[:, cols]``. Bitwise claims therefore hold
against the same shapes on the same number of BLAS threads (one per rank, as
every mpipar entry point sets).
"""
import numpy as np

from ..collectives import ALGORITHMS, allgather, allreduce, reduce_scatter
from ..collectives.blocks import split
from ..collectives.lowp import WIRE, allreduce_lowp
from . import tp_async


class TPGroup:
    """A tensor-parallel group: ``comm`` and the shard indices this process computes.

    ``ways`` is the split (p). With ``comm`` of size p each rank holds shard
    ``rank``; with ``comm`` of size 1 and ``ways`` > 1 the process holds every shard.
    ``deterministic`` reduces partial sums in fixed rank order: all partials are
    gathered and added ((P_0 + P_1) + P_2) + ... on every rank, identically.
    ``sequence_parallel``: the replicated regions hold blocks of positions (see above).
    ``engine``: a ProgressEngine on which a column-parallel layer's backward reduces its
    input gradient while it computes its weight gradients (``async_backward``; see
    mpipar.parallel.tp_async: the same bits as without). It may be set or cleared later.
    """

    def __init__(self, comm, ways=None, algorithm="auto", deterministic=False,
                 comm_dtype="float32", rounding="per_hop", sequence_parallel=False, engine=None):
        size = comm.Get_size()
        self.comm = comm
        self.ways = size if ways is None else ways
        if size not in (1, self.ways):
            raise ValueError(f"a {self.ways}-way split needs 1 or {self.ways} ranks, not {size}")
        self.shard_ids = [comm.Get_rank()] if size == self.ways else list(range(self.ways))
        self.algorithm = algorithm  #: the allreduce algorithm of every reduce_from_tp
        # allgathers use the same algorithm where allgather has one of that name
        self.gather_algorithm = algorithm if algorithm in (*ALGORITHMS["allgather"], "mpi") else "auto"
        # reduce-scatters too; deterministic: "naive", rank 0 adds in rank order, as reduce_from_tp
        self.scatter_algorithm = "naive" if deterministic else (
            algorithm if algorithm in (*ALGORITHMS["reduce_scatter"], "mpi") else "auto")
        self.deterministic = deterministic
        self.sequence_parallel = sequence_parallel
        #: the wire type of reductions and logit gathers (see mpipar.collectives.lowp)
        self.comm_dtype, self.rounding = comm_dtype, rounding
        self.engine = engine
        self.timings = None  #: a list to collect each backward reduction's tp_async.timing

    @property
    def async_backward(self):
        """True if column-parallel backwards reduce on ``engine``'s thread: an engine is set
        and there are other ranks to reduce with."""
        return self.engine is not None and self.comm.Get_size() > 1

    def start(self, fn, parts, what, overlap=True):
        """``fn(parts)`` on the engine's thread (``async_backward`` and ``overlap``) or now: a
        handle whose ``wait()`` gives the result (mpipar.parallel.tp_async.start)."""
        return tp_async.start(self, fn, parts, what, overlap)

    def copy_to_tp(self, x):
        """Megatron's f: every shard gets the same input (forward identity)."""
        return x

    def copy_to_tp_backward(self, grads):
        """f's backward: the input gradient is the sum of every shard's -- g's all-reduce.

        ``grads`` holds one array per shard this process computes.
        """
        return self.reduce_from_tp(grads)

    def reduce_from_tp(self, partials, owned=False):
        """Megatron's g: the sum of every shard's partial result, identical on every rank.

        ``partials`` holds one array per shard this process computes. ``owned``: they are this
        call's to overwrite (a layer's fresh products, held by nobody else), so the sum is built
        in the first one instead of a copy of it -- on one rank a copy of the output's size per
        layer fewer. The collectives copy what they are given, so with more ranks the one
        partial is never copied here.
        """
        alone = self.comm.Get_size() == 1
        if self.deterministic:
            # (p, ...) -- every rank gets every partial, then adds them in rank order
            everyone = partials if alone else allgather(self.comm, partials[0][None],
                                                        algorithm=self.gather_algorithm)
            # a copy of the gathered row, never a view: a view would keep all p rows alive
            total = everyone[0] if owned and alone else everyone[0].copy()
            for part in everyone[1:]:
                total += part
            return total
        # the allreduce below only reads its input: one partial needs no copy of its own
        reuse = owned or (len(partials) == 1 and not alone)
        local = partials[0] if reuse else partials[0].copy()
        for part in partials[1:]:
            local += part
        if alone:
            return local
        if self.comm_dtype != "float32":
            return allreduce_lowp(self.comm, local, self.comm_dtype, self.rounding, self.algorithm)
        return allreduce(self.comm, local, algorithm=self.algorithm)

    def reduce_from_tp_backward(self, grad):
        """g's backward: the identity -- every shard receives the whole output gradient."""
        return grad

    def max_from_tp(self, parts):
        """The elementwise maximum over every shard's array (order cannot change a max)."""
        local = parts[0].copy()
        for part in parts[1:]:
            np.maximum(local, part, out=local)
        if self.comm.Get_size() == 1:
            return local
        return allreduce(self.comm, local, op="max", algorithm=self.algorithm)

    def gather_from_tp(self, parts, axis=-1, exact=False):
        """Every shard's block, concatenated along ``axis`` in shard order.

        With a 16-bit ``comm_dtype`` the blocks travel rounded to it, unless ``exact``.
        """
        if self.comm.Get_size() == 1:  # one shard: its block is the whole (no copy)
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        if self.comm_dtype != "float32" and not exact:
            wire = WIRE[self.comm_dtype]
            out = allgather(self.comm, parts[0].astype(wire), axis=axis,
                            algorithm=self.gather_algorithm)
            return out.astype(parts[0].dtype)
        return allgather(self.comm, parts[0], axis=axis, algorithm=self.gather_algorithm)

    def gather_from_tp_backward(self, grad, axis=-1):
        """gather's backward: each shard keeps the gradient of its own block (a scatter)."""
        return self.scatter_to_tp(grad, axis)

    def scatter_to_tp(self, x, axis=-1):
        """The blocks of ``x`` along ``axis`` that this process's shards own."""
        n = x.shape[axis]
        return [np.take(x, np.arange(n)[split(n, self.ways, r)], axis=axis) for r in self.shard_ids]

    def scatter_to_tp_backward(self, grads, axis=-1):
        """scatter's backward: the shards' gradients side by side again (a gather)."""
        return self.gather_from_tp(grads, axis)

    # --- sequence parallelism (Korthikanti et al. 2022, sec. 4.2.2) ---------------------------

    def sequence_slices(self, n):
        """The positions of each shard this process computes, of a sequence of n."""
        return [split(n, self.ways, r) for r in self.shard_ids]

    def per_block(self, fn, *xs):
        """``fn`` on the replicated region's activations: on the whole arrays, or with sequence
        parallelism on each block of positions (``xs`` lists of blocks; a list back)."""
        if not self.sequence_parallel:
            return fn(*xs)
        return [fn(*blocks) for blocks in zip(*xs)]

    def gather_from_sp(self, blocks, axis=1):
        """Every shard's positions, concatenated along the sequence ``axis``: the whole input of a
        column-parallel layer, identical on every rank (an all-gather: no arithmetic)."""
        if self.comm.Get_size() == 1:
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=axis)
        return allgather(self.comm, blocks[0], axis=axis, algorithm=self.gather_algorithm)

    def gather_from_sp_backward(self, grads, axis=1):
        """gather's backward: each shard's input gradient is a partial sum over the whole
        sequence; a reduce-scatter adds them and leaves each shard its own positions."""
        return self.reduce_scatter_to_sp(grads, axis)

    def reduce_scatter_to_sp(self, partials, axis=1):
        """The sum of every shard's partial result, cut along the sequence ``axis``: the blocks of
        this process's shards (a list). Deterministic: added in rank order, as reduce_from_tp."""
        if self.comm.Get_size() == 1:
            total = partials[0].copy()
            for part in partials[1:]:
                total += part
            return [total[(slice(None),) * (axis % total.ndim) + (s,)]
                    for s in self.sequence_slices(total.shape[axis])]
        return [reduce_scatter(self.comm, partials[0], axis=axis, algorithm=self.scatter_algorithm)]

    def reduce_scatter_to_sp_backward(self, grads, axis=1):
        """reduce-scatter's backward: every shard needs the gradient of every position -- an
        all-gather of the blocks."""
        return self.gather_from_sp(grads, axis)
