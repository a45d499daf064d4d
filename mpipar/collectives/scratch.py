"""Receive buffers kept per communicator, reused from call to call.

Measured on both MPI libraries mpipar runs on (MPICH 5 on a 2-core machine, Open
MPI 4.1.6 on a 16-core one), a large message received into memory that was just
allocated costs several times one received into memory used before. Open MPI's
MPI_Allreduce of 1 MiB at p = 2 took 1.24 ms into a fresh result, 0.37 ms into a
reused one plus the copy out. With MPICH, a recursive-doubling all-reduce of 2 MiB
(which receives all n bytes into a new buffer) took 3.6 times the ring (which
receives n/p); with its receive buffer reused, as long as the ring. Why is the
library's and the kernel's business (new pages are mapped on first touch); the
measurement is what decides.

So the temporaries a collective only receives into -- the incoming block of a
ring or tree step, the library's result before it is copied out -- come from
here: one buffer per communicator and *slot* (a name for one temporary of an
algorithm), grown to the largest size asked for and kept, as an MPI attribute of
the communicator (freed with it). What a collective returns is never scratch: it
is copied out. One thread uses a communicator at a time (true of every blocking
collective), so one buffer per slot is enough.

Memory: :func:`held_bytes` reports what a communicator keeps; :func:`release`
frees it. Nothing is kept for buffers under :data:`SMALLEST` bytes (they are
cheap to allocate, and NumPy keeps a cache of small allocations anyway).
"""
from mpi4py import MPI
import numpy as np

SMALLEST = 1 << 16  #: below this many bytes a temporary is simply allocated

_KEYVAL = []  # the attribute key, created on first use


def buffer(comm, count, dtype, slot):
    """An uninitialised array of ``count`` elements of ``dtype`` that ``comm`` keeps for ``slot``."""
    dtype = np.dtype(dtype)
    nbytes = count * dtype.itemsize
    if nbytes < SMALLEST:
        return np.empty(count, dtype)
    kept = _kept(comm)
    raw = kept.get(slot)
    if raw is None or raw.size < nbytes:
        raw = kept[slot] = np.empty(nbytes, np.uint8)
    return raw[:nbytes].view(dtype)


def held_bytes(comm):
    """Bytes of scratch ``comm`` keeps now."""
    kept = comm.Get_attr(_KEYVAL[0]) if _KEYVAL else None
    return sum(a.nbytes for a in kept.values()) if kept else 0


def release(comm):
    """Free the scratch ``comm`` keeps (the next collective allocates again)."""
    if _KEYVAL and comm.Get_attr(_KEYVAL[0]) is not None:
        comm.Delete_attr(_KEYVAL[0])


def _kept(comm):
    if not _KEYVAL:
        _KEYVAL.append(MPI.Comm.Create_keyval())
    kept = comm.Get_attr(_KEYVAL[0])
    if kept is None:
        kept = {}
        comm.Set_attr(_KEYVAL[0], kept)
    return kept
