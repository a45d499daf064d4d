"""Memory per rank, as the operating system counts it: the peak resident set size.

``ru_maxrss`` (getrusage(2)) is the largest resident set the process has had so far:
its interpreter, MPI library, parameters, activations and every temporary copy that
was ever alive at once. Linux reports it in KiB, macOS in bytes. The figure of a job
is the maximum over its ranks: parallel work fits when its largest rank fits.
"""
import dataclasses
import resource
import sys

import numpy as np


def peak_rss_bytes():
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_rss_per_rank(comm):
    """Every rank's peak resident set size in bytes, in rank order, on every rank (control data)."""
    return comm.allgather(peak_rss_bytes())


def machine_bytes():
    """This machine's physical memory in bytes (sysconf), or None where it cannot be asked."""
    import os
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def too_big(what, per_rank, ranks):
    """A message if ``ranks`` processes needing ``per_rank`` bytes each cannot fit this machine's
    memory, else None. Asked before allocating, so that a size typed wrong is one clear error
    instead of a MemoryError (or the machine swapping) on every rank."""
    from .units import format_bytes
    total = machine_bytes()
    if total is None or per_rank * ranks <= total:
        return None
    return (f"{what} needs about {format_bytes(per_rank)} per rank, {format_bytes(per_rank * ranks)} "
            f"for {ranks} rank(s); this machine has {format_bytes(total)}")


def held_bytes(*objects):
    """Bytes of the distinct arrays reachable from ``objects`` (arrays, lists, tuples, dicts,
    dataclasses): what they keep alive. A view counts as the array it views, once."""
    seen, total, todo = set(), 0, list(objects)
    while todo:
        obj = todo.pop()
        if isinstance(obj, np.ndarray):
            while isinstance(obj.base, np.ndarray):
                obj = obj.base
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.nbytes
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            todo.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
    return total
