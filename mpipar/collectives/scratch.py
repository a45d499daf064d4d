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

An algorithm may also keep a *plan* here (:func:`plan`): buffers with MPI persistent
requests bound to them (recursive multiplying's, multiplying.py), built on the first call
of a size and restarted by every later one. Plans are few (at most :data:`PLANS` per
communicator, the oldest freed first) and their requests are freed with the communicator,
by :func:`release`, or at exit before MPI is finalised.

Memory: :func:`held_bytes` reports what a communicator keeps, plans included;
:func:`release` frees it. Nothing is kept for buffers under :data:`SMALLEST` bytes (they
are cheap to allocate, and NumPy keeps a cache of small allocations anyway).
"""
import atexit

from mpi4py import MPI
import numpy as np

SMALLEST = 1 << 16  #: below this many bytes a temporary is simply allocated
PLANS = 8  #: plans kept per communicator

_KEYVAL = []  # the attribute key, created on first use
_LIVE = {}  # id(plan) -> plan: what is freed at exit


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


def plan(comm, key, make):
    """The plan ``comm`` keeps under ``key``, made by ``make(private)`` on first use: an
    object with ``nbytes`` and ``free()`` (which frees its MPI requests). ``private`` is a
    duplicate of ``comm`` that only plans use (collective on first use, as every call of a
    collective is): persistent requests hold on to their communicator, so the user's ``comm``
    can be freed at once, freeing its plans and then the duplicate."""
    kept = _kept(comm)
    found = kept.get(("plan", key))
    if found is None:
        plans = [k for k in kept if isinstance(k, tuple) and k[0] == "plan"]
        if len(plans) >= PLANS:  # dicts keep insertion order: the oldest goes
            _free(kept.pop(plans[0]))
        private = kept.get(("private",))
        if private is None:
            private = kept[("private",)] = _Private(comm.Dup())
            _LIVE[id(private)] = private
        found = kept[("plan", key)] = make(private.comm)
        _LIVE[id(found)] = found
    return found


class _Private:
    """The duplicate communicator of a communicator's plans (freed after them)."""

    nbytes = 0

    def __init__(self, comm):
        self.comm = comm

    def free(self):
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()


def drop_plan(comm, key):
    """Free and forget the plan under ``key`` (after an error left its requests unusable)."""
    _free(_kept(comm).pop(("plan", key), None))


def held_bytes(comm):
    """Bytes of scratch ``comm`` keeps now."""
    kept = comm.Get_attr(_KEYVAL[0]) if _KEYVAL else None
    return sum(a.nbytes for a in kept.values()) if kept else 0


def release(comm):
    """Free the scratch ``comm`` keeps (the next collective allocates again)."""
    if _KEYVAL and comm.Get_attr(_KEYVAL[0]) is not None:
        comm.Delete_attr(_KEYVAL[0])


def _free(found):
    if hasattr(found, "free") and not MPI.Is_finalized():
        _LIVE.pop(id(found), None)
        found.free()


def _in_order(found):  # plans before the duplicate communicator they use
    return sorted(found, key=lambda f: isinstance(f, _Private))


def _deleted(comm, keyval, kept):  # the communicator is freed, or the attribute deleted
    for found in _in_order(kept.values()):
        _free(found)


@atexit.register  # before mpi4py finalises MPI, which warns of requests still allocated
def _free_all():
    if MPI.Is_finalized():
        return
    for found in _in_order(list(_LIVE.values())):
        _free(found)


def _kept(comm):
    if not _KEYVAL:
        _KEYVAL.append(MPI.Comm.Create_keyval(delete_fn=_deleted))
    kept = comm.Get_attr(_KEYVAL[0])
    if kept is None:
        kept = {}
        comm.Set_attr(_KEYVAL[0], kept)
    return kept
