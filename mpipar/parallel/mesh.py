"""The rank grid: dp x pp x tp ranks, one communicator per axis.

Megatron-LM's three kinds of parallelism (Narayanan et al. 2021, "Efficient
Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", sec. 3):
tensor parallelism (tp) splits every layer's weights, pipeline parallelism (pp)
puts consecutive layers on consecutive *stages*, data parallelism (dp) runs whole
replicas on different data. The world's dp * pp * tp ranks form a grid whose
coordinate (i, k, j) is world rank

    rank = (i * pp + k) * tp + j    i = dp_index in [0, dp), k = pp_index in [0, pp),
                                    j = tp_index in [0, tp)

Why this order, fastest-varying first (sec. 3.3, Takeaways #1 and #2):

* tp innermost: a tp group all-reduces activations twice per layer in the forward
  pass and twice in the backward pass -- the most traffic, on the critical path --
  so its ranks are *adjacent*, where messages are cheapest (one node).
* pp next: consecutive stages exchange only one activation (forward) or gradient
  (backward) per micro-batch, point to point, between neighbours; the paper runs
  pipelines across servers for this reason.
* dp outermost: replicas meet once per step, to average gradients (and can overlap
  that with the backward pass). A model replica -- every stage of every shard -- is
  the pp * tp *contiguous* ranks ``[i * pp * tp, (i + 1) * pp * tp)``: the
  model-parallel size M = t * p of Takeaway #2, a block of the machine of its own.

    tp_comm         same dp and pp index (a row): one stage's weight shards.
    pp_comm         same dp and tp index: the stages of one pipeline, in stage order
                    (its rank is the stage index); activations and gradients flow here.
    dp_comm         same pp and tp index: replicas of the same shard of the same
                    stage, which see different data; gradients are averaged over it.
    embedding_comm  the first and the last stage of this rank's pipeline (same dp
                    and tp index): with tied input/output embeddings (GPT-2) the first
                    stage holds the embedding and the last the LM head -- the same
                    matrix -- so they must sum their two gradients (Megatron-LM's
                    "embedding group", all-reduced by its ``_allreduce_word_embedding_grads``).
                    For pp = 1 it is the rank alone;
                    for pp >= 2 two ranks (first, last, in that order); on a middle
                    stage it is ``MPI.COMM_NULL``.

Each group's rank order is the index along its axis (the ``key`` of ``Split``).
A dp x tp mesh is the pp = 1 case: ``Mesh(world, dp, tp)`` is unchanged.
"""
from dataclasses import InitVar, dataclass, field
from numbers import Integral
from typing import NamedTuple

__all__ = ["Coords", "Mesh"]


class Coords(NamedTuple):
    """A rank's grid coordinate, in the argument order of :meth:`Mesh.rank_of`."""

    dp_index: int  #: which replica
    tp_index: int  #: which shard of a stage
    pp_index: int  #: which pipeline stage


def _bad_degree(name, v):
    """A message if ``v`` is not a whole number >= 1, else None."""
    if not isinstance(v, Integral) or isinstance(v, bool) or v < 1:
        return f"{name} must be a whole number >= 1, not {v!r}"
    return None


def _problem(size, dp, pp, tp):
    """What is wrong with a dp x pp x tp grid on ``size`` ranks, or None (no messages)."""
    bad = _bad_degree("dp", dp) or _bad_degree("pp", pp) or _bad_degree("tp", tp)
    if bad:
        return bad
    if dp * pp * tp != size:
        return (f"dp * pp * tp = {dp} * {pp} * {tp} = {dp * pp * tp}, but the communicator "
                f"has {size} ranks")
    return None


@dataclass(frozen=True, eq=False)
class Mesh:
    """A dp x pp x tp grid over ``world`` (size dp * pp * tp), with a communicator per axis."""

    world: object = field(repr=False)     #: the communicator the grid is cut from
    dp: int                               #: data-parallel degree (replicas)
    tp: int                               #: tensor-parallel degree (shards per stage)
    check: InitVar[bool] = True           #: confirm every rank asked for the same grid
    pp: int = 1                           #: pipeline-parallel degree (stages per replica)
    dp_rank: int = field(init=False)      #: this rank's index along dp
    tp_rank: int = field(init=False)      #: this rank's index along tp
    pp_rank: int = field(init=False)      #: this rank's stage: its index along pp
    dp_comm: object = field(init=False, repr=False)  #: same pp, tp index: gradients averaged here
    tp_comm: object = field(init=False, repr=False)  #: same dp, pp index: weight shards split here
    pp_comm: object = field(init=False, repr=False)  #: same dp, tp index: the stages, in order
    embedding_comm: object = field(init=False, repr=False)  #: first and last stage (COMM_NULL between)

    def __post_init__(self, check):
        from mpi4py import MPI
        size, rank = self.world.Get_size(), self.world.Get_rank()
        problem = _problem(size, self.dp, self.pp, self.tp)
        if problem:  # the same verdict on every rank that passed the same arguments
            raise ValueError(f"Mesh: {problem}")
        if check and size > 1:  # one small control message: do all ranks agree?
            grids = self.world.allgather((int(self.dp), int(self.pp), int(self.tp)))
            if any(g != grids[0] for g in grids):
                seen = ", ".join(f"rank {r}: {d}x{q}x{t}" for r, (d, q, t) in enumerate(grids))
                raise ValueError(f"Mesh: ranks disagree on the grid dp x pp x tp ({seen})")
        dp, pp, tp = int(self.dp), int(self.pp), int(self.tp)
        i, k, j = rank // (pp * tp), rank // tp % pp, rank % tp
        ends = k in (0, pp - 1)  # the first or the last stage (both when pp = 1)
        fields = dict(dp=dp, pp=pp, tp=tp, dp_rank=i, pp_rank=k, tp_rank=j,
                      # Split(color, key): same color -> same group, ordered by key
                      dp_comm=self.world.Split(k * tp + j, i),
                      tp_comm=self.world.Split(i * pp + k, j),
                      pp_comm=self.world.Split(i * tp + j, k),
                      embedding_comm=self.world.Split(i * tp + j if ends else MPI.UNDEFINED, k))
        for name, value in fields.items():  # frozen: the fields are set once, here
            object.__setattr__(self, name, value)

    @classmethod
    def build(cls, comm, dp=None, tp=None, pp=1, *, check=True):
        """A mesh over ``comm`` with the missing degree filled in.

        ``pp`` is given or 1 (None means 1: pipelines are never guessed). Of dp and tp,
        the one left out gets the ranks that remain; with neither, all of them go to
        dp (all data-parallel).
        """
        size = comm.Get_size()
        pp = 1 if pp is None else pp
        given = {name: v for name, v in (("dp", dp), ("pp", pp), ("tp", tp)) if v is not None}
        for name, v in given.items():
            bad = _bad_degree(name, v)
            if bad:
                raise ValueError(f"Mesh: {bad}")
        known = 1
        for v in given.values():
            known *= int(v)
        if size % known:
            names = " * ".join(given)
            raise ValueError(f"Mesh: {names} = {known} does not divide the {size} ranks "
                             f"of the communicator")
        rest = size // known
        if dp is None and tp is None:
            dp, tp = rest, 1
        elif dp is None:
            dp = rest
        elif tp is None:
            tp = rest
        return cls(comm, dp, tp, check, pp=pp)

    def rank_of(self, dp_index, tp_index, pp_index=0):
        """The world rank at grid coordinate (dp_index, tp_index, pp_index).

        The arguments come in :class:`Coords` order (the dp x tp arguments first, the
        stage last, 0 by default so dp x tp callers are unchanged), not in layout order.
        """
        return (dp_index * self.pp + pp_index) * self.tp + tp_index

    def coords(self, rank):
        """The grid coordinate :class:`Coords` (dp, tp, pp) of a world rank: ``rank_of(*coords(r)) == r``."""
        rest, tp_index = divmod(rank, self.tp)
        dp_index, pp_index = divmod(rest, self.pp)
        return Coords(dp_index, tp_index, pp_index)

    @property
    def is_first_stage(self):
        """True on pipeline stage 0 (it reads the input tokens)."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self):
        """True on the last pipeline stage (it computes the loss)."""
        return self.pp_rank == self.pp - 1

    @property
    def in_embedding_group(self):
        """True where ``embedding_comm`` is a communicator (the first or the last stage)."""
        return self.is_first_stage or self.is_last_stage

    def describe(self):
        """A table of which world rank sits at which (dp, pp, tp) coordinate."""
        width = max(len(str(self.dp * self.pp * self.tp - 1)), 2)
        label = 7 if self.pp == 1 else 12
        head = " " * label + "".join(f"{'tp=' + str(j):>{width + 4}}" for j in range(self.tp))
        if self.pp == 1:
            lines = [f"mesh: {self.dp} (dp) x {self.tp} (tp) = {self.dp * self.tp} ranks; "
                     f"world rank at (dp, tp) -- a row is a tp group, a column a dp group"]
        else:
            lines = [f"mesh: {self.dp} (dp) x {self.pp} (pp) x {self.tp} (tp) = "
                     f"{self.dp * self.pp * self.tp} ranks; world rank at (dp, pp, tp)",
                     "a row is a tp group (one stage's shards); within one dp block a column "
                     "is a pipeline (pp group), stage 0 on top; the same cell in every block "
                     "is a dp group"]
        lines.append(head)
        for i in range(self.dp):
            for k in range(self.pp):
                name = f"dp={i}" if self.pp == 1 else f"dp={i} pp={k}"
                lines.append(f"{name:<{label}}" + "".join(
                    f"{self.rank_of(i, j, k):>{width + 4}}" for j in range(self.tp)))
        return "\n".join(lines)

    def close(self):
        """Free the split communicators (``world`` belongs to the caller). Idempotent."""
        from mpi4py import MPI
        for comm in (self.dp_comm, self.tp_comm, self.pp_comm, self.embedding_comm):
            if comm != MPI.COMM_NULL:
                comm.Free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
