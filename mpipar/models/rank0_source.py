"""Weights that only rank 0 can read, sent to every rank as its own slices only (``demo
--weights-from-rank0``): for jobs over several machines where the checkpoint is on one of them.

    source = FromRank0(comm, lambda: load_model(weights=path, sliced=True))   # every rank
    model = source.build(lambda params: GPT(source.config, params, comm))

A rank does not know in advance which slices its model asks for -- that follows from how the
model shards itself -- so ``build`` runs the model's constructor twice. The first time every
``take`` is answered with zeros of the right shape and written down; the requests (names, axes,
indices: control data) are gathered on rank 0, which reads each one from the file and sends it
to the rank that asked (``Send`` of the array's bytes, in request order, nothing pickled); the
second construction gets the real slices from what arrived. Rank 0 reads every slice (all of
them before the first send, so that a bad tensor is one error on every rank, at the price of
holding every rank's slices at once); no other rank opens a file, and each receives only what
its own shards hold.
"""
from mpi4py import MPI
import numpy as np

from .sources import SlicedSource

__all__ = ["FromRank0"]

TAG = 0x7730


class FromRank0(SlicedSource):
    """A source of shards whose reads happen on rank 0 of ``comm`` (``open_source()``: the
    (config, source, task) of ``checkpoint.load_model(..., sliced=True)``, called there only)."""

    def __init__(self, comm, open_source):
        self.comm, self.rank = comm, comm.Get_rank()
        found, problem = None, None
        if self.rank == 0:
            try:
                found = open_source()
            except ValueError as e:
                problem = str(e)
        problem = comm.bcast(problem, root=0)
        if problem:
            raise ValueError(problem)
        config, source, task = found if self.rank == 0 else (None, None, None)
        self.inner = source
        header = None
        if self.rank == 0:
            header = (config, task, {n: tuple(source.shape(n)) for n in source.names()})
        self.config, self.task, self.shapes = comm.bcast(header, root=0)
        self.dtype = np.dtype(self.config.dtype)
        self.requests, self.arrived = None, None
        self.bytes_received = 0  #: what this rank was sent: its own slices only

    def names(self):
        return list(self.shapes)

    def shape(self, name):
        return self.shapes[name]

    def _slice(self, name, axis, index):
        if self.requests is not None:  # the first construction: write the request down
            self.requests.append((name, axis, None if index is None else np.asarray(index, np.int64)))
            return np.zeros(self._shape_of(name, axis, index), self.dtype)
        return self.arrived[_key(name, axis, index)]

    def _shape_of(self, name, axis, index):
        shape = list(self.shapes[name])
        if axis is not None:
            shape[axis] = len(np.asarray(index).reshape(-1))
        return tuple(shape)

    def build(self, construct):
        """``construct(self)`` with this rank's real slices (module docstring); collective."""
        self.requests = []
        construct(self)
        mine, self.requests = self.requests, None
        self.__dict__.pop("_replicated", None)  # the zeros of the first construction
        everyone = self.comm.gather(mine, root=0)
        self.arrived, values, problem = {}, None, None
        if self.rank == 0:  # read everything first: a bad tensor is one error on every rank
            try:
                values = [[np.ascontiguousarray(self.inner.take(name, axis, index), self.dtype)
                           for name, axis, index in requests] for requests in everyone]
            except ValueError as e:
                problem = str(e)
        problem = self.comm.bcast(problem, root=0)
        if problem:
            raise ValueError(problem)
        if self.rank == 0:
            for r, (requests, got) in enumerate(zip(everyone, values)):
                for (name, axis, index), value in zip(requests, got):
                    if r == 0:
                        self.arrived[_key(name, axis, index)] = value
                    else:
                        self.comm.Send([value, MPI.BYTE], dest=r, tag=TAG)
        else:
            for name, axis, index in mine:
                value = np.empty(self._shape_of(name, axis, index), self.dtype)
                self.comm.Recv([value, MPI.BYTE], source=0, tag=TAG)
                self.arrived[_key(name, axis, index)] = value
                self.bytes_received += value.nbytes
        model = construct(self)
        self.arrived = None
        return model


def _key(name, axis, index):
    return name, axis, None if index is None else np.asarray(index, np.int64).tobytes()
