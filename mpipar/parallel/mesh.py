"""The rank grid: dp x tp ranks, one communicator per axis.

Megatron-LM's grouping (Narayanan et al. 2021, "Efficient Large-Scale Language
Model Training on GPU Clusters Using Megatron-LM", sec. 3, for the terms): the
world's dp * tp ranks form a grid whose coordinate (i, j) is world rank

    rank = i * tp + j        i = dp_index in [0, dp),  j = tp_index in [0, tp)

so a tensor-parallel group is tp *adjacent* ranks -- the ones that exchange
activations in every layer, placed where messages are cheapest (one node).

    tp_comm   ranks with the same dp_index (a row): the weight shards of one model
              replica are split over it; nothing is averaged over it.
    dp_comm   ranks with the same tp_index (a column): replicas of the same shard
              that see different data; gradients are averaged over it.

Each group's rank order is the index along its axis (the ``key`` of ``Split``).
"""
from dataclasses import InitVar, dataclass, field
from numbers import Integral

__all__ = ["Mesh"]


def _bad_degree(name, v):
    """A message if ``v`` is not a whole number >= 1, else None."""
    if not isinstance(v, Integral) or isinstance(v, bool) or v < 1:
        return f"{name} must be a whole number >= 1, not {v!r}"
    return None


def _problem(size, dp, tp):
    """What is wrong with a dp x tp grid on ``size`` ranks, or None (no messages)."""
    bad = _bad_degree("dp", dp) or _bad_degree("tp", tp)
    if bad:
        return bad
    if dp * tp != size:
        return f"dp * tp = {dp} * {tp} = {dp * tp}, but the communicator has {size} ranks"
    return None


@dataclass(frozen=True, eq=False)
class Mesh:
    """A dp x tp grid over ``world`` (size dp * tp), with a communicator per axis."""

    world: object = field(repr=False)     #: the communicator the grid is cut from
    dp: int                               #: data-parallel degree (replicas)
    tp: int                               #: tensor-parallel degree (shards per replica)
    check: InitVar[bool] = True           #: confirm every rank asked for the same grid
    dp_rank: int = field(init=False)      #: this rank's index along dp
    tp_rank: int = field(init=False)      #: this rank's index along tp
    dp_comm: object = field(init=False, repr=False)  #: same tp_rank: gradients averaged here
    tp_comm: object = field(init=False, repr=False)  #: same dp_rank: weight shards split here

    def __post_init__(self, check):
        size, rank = self.world.Get_size(), self.world.Get_rank()
        problem = _problem(size, self.dp, self.tp)
        if problem:  # the same verdict on every rank that passed the same arguments
            raise ValueError(f"Mesh: {problem}")
        if check and size > 1:  # one small control message: do all ranks agree?
            grids = self.world.allgather((self.dp, self.tp))
            if any(g != grids[0] for g in grids):
                seen = ", ".join(f"rank {r}: {d}x{t}" for r, (d, t) in enumerate(grids))
                raise ValueError(f"Mesh: ranks disagree on the grid dp x tp ({seen})")
        dp, tp = int(self.dp), int(self.tp)
        fields = dict(dp=dp, tp=tp, dp_rank=rank // tp, tp_rank=rank % tp,
                      dp_comm=self.world.Split(rank % tp, rank // tp),  # color, key
                      tp_comm=self.world.Split(rank // tp, rank % tp))
        for name, value in fields.items():  # frozen: the fields are set once, here
            object.__setattr__(self, name, value)

    @classmethod
    def build(cls, comm, dp=None, tp=None, *, check=True):
        """A mesh over ``comm`` with the missing degree filled in (default: all data-parallel)."""
        size = comm.Get_size()
        if dp is None and tp is None:
            dp, tp = size, 1
        elif dp is None or tp is None:
            name, given = ("tp", tp) if dp is None else ("dp", dp)
            bad = _bad_degree(name, given)
            if bad:
                raise ValueError(f"Mesh: {bad}")
            if size % given:
                raise ValueError(f"Mesh: {name} = {given} does not divide the {size} ranks "
                                 f"of the communicator")
            dp, tp = (size // given, given) if dp is None else (given, size // given)
        return cls(comm, dp, tp, check)

    def rank_of(self, dp_index, tp_index):
        """The world rank at grid coordinate (dp_index, tp_index)."""
        return dp_index * self.tp + tp_index

    def coords(self, rank):
        """The grid coordinate (dp_index, tp_index) of a world rank."""
        return divmod(rank, self.tp)

    def describe(self):
        """A table of which world rank sits at which (dp, tp) coordinate."""
        width = max(len(str(self.dp * self.tp - 1)), 2)
        head = " " * 7 + "".join(f"{'tp=' + str(j):>{width + 4}}" for j in range(self.tp))
        lines = [f"mesh: {self.dp} (dp) x {self.tp} (tp) = {self.dp * self.tp} ranks; "
                 f"world rank at (dp, tp) -- a row is a tp group, a column a dp group", head]
        for i in range(self.dp):
            lines.append(f"{'dp=' + str(i):<7}"
                         + "".join(f"{self.rank_of(i, j):>{width + 4}}" for j in range(self.tp)))
        return "\n".join(lines)

    def close(self):
        """Free the two split communicators (``world`` belongs to the caller). Idempotent."""
        from mpi4py import MPI
        for comm in (self.dp_comm, self.tp_comm):
            if comm != MPI.COMM_NULL:
                comm.Free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
