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
"""
import time

import numpy as np

from ..measure import ledger
from . import allreduce
from .blocks import BFLOAT16, Fold, block, split_offsets
from .channel import Channel

WIRE = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BFLOAT16}
ROUNDINGS = ("per_hop", "once")
ALGORITHMS = ("ring", "recursive_doubling")


def problems(comm_dtype, rounding, algorithm):
    """What is wrong with a low-precision setting, or None (no messages sent)."""
    if comm_dtype not in WIRE:
        return f"comm dtype {comm_dtype!r}: choose from {', '.join(WIRE)}"
    if comm_dtype == "float32" and rounding in ROUNDINGS + ("none",):
        return None  # a float32 wire rounds nothing
    if rounding not in ROUNDINGS:
        return f"rounding {rounding!r}: choose from {', '.join(ROUNDINGS)}"
    if comm_dtype != "float32" and algorithm not in ALGORITHMS:
        return f"a {comm_dtype} wire needs algorithm ring or recursive_doubling, not {algorithm!r}"
    if rounding == "once" and comm_dtype != "float32" and algorithm != "ring":
        return "rounding once needs the ring (a float32 reduce-scatter, then a 16-bit allgather)"
    return None


def _round(x, wire):
    """x rounded to the wire type and back to float32 (round to nearest even)."""
    return x.astype(wire).astype(np.float32)


def _ring(ch, x, wire, per_hop):
    """Ring reduce-scatter (16-bit or float32 messages), then a 16-bit ring allgather."""
    p, r = ch.size, ch.rank
    offsets = split_offsets(x.size, p)
    send_dtype = wire if per_hop else np.float32
    incoming = np.empty(max(offsets[j + 1] - offsets[j] for j in range(p)), send_dtype)
    for s in range(p - 1):
        ch.step()
        send_b, recv_b = (r - s - 1) % p, (r - s - 2) % p
        mine = block(x, offsets, recv_b)
        part = incoming[:mine.size]
        ch.sendrecv(block(x, offsets, send_b).astype(send_dtype), (r + 1) % p, part, (r - 1) % p)
        mine[...] = part.astype(np.float32) + mine  # partial from earlier ranks, then ours
    wired = x.astype(wire)  # every rank rounds its finished block once; the rest is overwritten
    for s in range(p - 1):
        ch.step()
        ch.sendrecv(block(wired, offsets, (r - s) % p), (r + 1) % p,
                    block(wired, offsets, (r - s - 1) % p), (r - 1) % p)
    return wired.astype(np.float32)


def _recursive_doubling(ch, x, wire):
    """Every exchange moves 16-bit partial sums; both partners add the same two
    rounded operands, lower rank first."""
    fold, r = Fold(ch.size, split_offsets(x.size, ch.size)), ch.rank
    incoming = np.empty(x.size, wire)
    if fold.q < fold.p:
        ch.step()
        if fold.is_extra(r):
            ch.send(x.astype(wire), fold.partner(r))
        elif fold.partner(r) is not None:
            ch.recv(incoming, fold.partner(r))
            x[...] = _round(x, wire) + incoming.astype(np.float32)
    if fold.is_extra(r):
        ch.steps += fold.q.bit_length() - 1
    else:
        d = 1
        while d < fold.q:
            ch.step()
            mine = x.astype(wire)
            ch.sendrecv(mine, r ^ d, incoming, r ^ d)
            a, b = (mine, incoming) if r < (r ^ d) else (incoming, mine)
            x[...] = a.astype(np.float32) + b.astype(np.float32)
            d <<= 1
    result = x.astype(wire)
    if fold.q < fold.p:
        ch.step()
        if fold.is_extra(r):
            ch.recv(result, fold.partner(r))
        elif fold.partner(r) is not None:
            ch.send(result, fold.partner(r))
    return result.astype(np.float32)


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
        out = _ring(ch, work, wire, per_hop=rounding == "per_hop")
    else:
        out = _recursive_doubling(ch, work, wire)
    if ledger.recording():
        ledger.record(dict(op="allreduce", algorithm=algorithm, requested=algorithm,
                           dtype="float32", count=int(x.size), nbytes=int(x.nbytes),
                           world_size=ch.size, rank=ch.rank, bytes_sent=ch.bytes_sent,
                           messages=ch.messages, steps=ch.steps,
                           seconds=time.perf_counter() - t0, trace=ch.trace,
                           comm_dtype=comm_dtype, rounding=rounding,
                           # what the cost model should see: per hop every message is 16-bit;
                           # once, the reduce-scatter half is 4-byte and the allgather 2-byte
                           wire_nbytes=int(x.size * (wire.itemsize if rounding == "per_hop"
                                                     else (4 + wire.itemsize) / 2))))
    return out.reshape(x.shape)
