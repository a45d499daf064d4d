"""All-reduce with a lower-precision wire: half the bytes, some rounding -- measured.

    y = allreduce_lowp(comm, x, comm_dtype="bfloat16", rounding="per_hop", algorithm="ring")

``x`` is float32; what travels is float16 or bfloat16 (``ml_dtypes``); every
addition happens in float32. Where the rounding to 16 bits happens decides the
error:

* ``rounding="per_hop"``: every message is the 16-bit cast of a float32 partial
  sum. In a ring reduce-scatter a block is rounded at each of its p-1 hops (and
  once more for the allgather), so the error grows with p: about
  p * u16 * sum|x_i| in the worst case. All messages are 16-bit: half the bytes.
* ``rounding="once"`` (ring only): the reduce-scatter runs in float32; each rank
  rounds its finished block once and the allgather moves 16-bit blocks: error
  about u16 * |sum| + (p-1) u32 sum|x_i|, for 3/4 of float32's bytes. That the
  per-hop error compounds is why ZeRO++ (Wang et al. 2023, sec. 4.2) avoids
  re-quantising at every hop.

u16 = 2^-11 for float16, 2^-8 for bfloat16 (Higham 2002, sec. 2.1). Every rank
ends with identical bits: each block is finished on one rank and then only copied
(ring), or both partners round their own partial sum before adding, lower rank
first (recursive doubling).

The algorithms are the plain ones, ``allreduce.ring`` and
``allreduce.recursive_doubling``, given the wire dtype: on the same ring and fold
steps, each message is cast to the wire before it is sent and back to float32
when it arrives. This file adds the settings and their checks.
"""
import time

import numpy as np

from ..measure import ledger
from . import allreduce  # the collective of __init__.py, for float32 wires
from .allreduce import recursive_doubling, ring  # the algorithms, which take a wire dtype
from .blocks import BFLOAT16
from .channel import Channel

WIRE = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BFLOAT16}
ROUNDINGS = ("per_hop", "once")
LOWP_ALGORITHMS = ("ring", "recursive_doubling")  # the allreduce algorithms that take a 16-bit wire


def problems(comm_dtype, rounding, algorithm):
    """What is wrong with a low-precision setting, or None (no messages sent)."""
    if comm_dtype not in WIRE:
        return f"comm dtype {comm_dtype!r}: choose from {', '.join(WIRE)}"
    if comm_dtype == "float32" and rounding in ROUNDINGS + ("none",):
        return None  # a float32 wire rounds nothing
    if rounding not in ROUNDINGS:
        return f"rounding {rounding!r}: choose from {', '.join(ROUNDINGS)}"
    if comm_dtype != "float32" and algorithm not in LOWP_ALGORITHMS:
        return f"a {comm_dtype} wire needs algorithm {' or '.join(LOWP_ALGORITHMS)}, not {algorithm!r}"
    if rounding == "once" and comm_dtype != "float32" and algorithm != "ring":
        return "rounding once needs the ring (a float32 reduce-scatter, then a 16-bit allgather)"
    return None


def allreduce_lowp(comm, x, comm_dtype="float16", rounding="per_hop", algorithm="ring"):
    """Sum of every rank's float32 ``x`` with a ``comm_dtype`` wire; float32, same on all ranks.

    A float32 wire is the ordinary hand-written all-reduce. Arguments must be the
    same on every rank (checked locally: a bad setting raises before any message).
    """
    problem = problems(comm_dtype, rounding, algorithm)
    if problem:
        raise ValueError(problem)
    x = np.asarray(x)
    if comm_dtype == "float32" or comm.Get_size() == 1:
        return allreduce(comm, x, algorithm=algorithm, check=False)
    wire = WIRE[comm_dtype]
    work = np.array(x, np.float32, order="C", copy=True).reshape(-1)
    ch = Channel(comm, trace=ledger.tracing())
    t0 = time.perf_counter()
    if algorithm == "ring":
        out = ring(ch, work, "sum", wire, rounding)
    else:
        out = recursive_doubling(ch, work, "sum", wire)
    if ledger.recording():
        # what the cost model should see: per hop every message is 16-bit;
        # once, the reduce-scatter half is 4-byte and the allgather 2-byte
        wire_nbytes = x.size * (wire.itemsize if rounding == "per_hop" else (4 + wire.itemsize) / 2)
        ledger.record_call(ch, "allreduce", algorithm, work.dtype, x.size, x.nbytes,
                           time.perf_counter() - t0, comm_dtype=comm_dtype, rounding=rounding,
                           wire_nbytes=int(wire_nbytes))
    return out.reshape(x.shape)
