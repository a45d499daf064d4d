"""Measuring the cost model's constants on this machine: alpha, beta, gamma and o.

Two ways to measure alpha and beta (``method``):

* ``"contention"`` (the default): every rank exchanges at once, as the ring and
  pairwise algorithms do -- rank r Sendrecvs n bytes to r+1 while receiving from
  r-1 -- and a trial's time is the slowest rank's. All p ranks share the memory
  system (on one node "the network" is memory copies), so beta is the bandwidth
  one rank gets while the others also send, and alpha includes the progress
  engine waiting on a neighbour that is itself busy.
* ``"pingpong"``: ranks 0 and 1 alone, one-way time = round trip / 2, the others
  asleep: the classic, optimistic figure (kept to show how far it is off).
  ``"contention"`` measures it too, for ``beta_alone``: the bandwidth of the algorithms
  whose messages travel one at a time (naive, tree, binomial; cost_model.py).

Either way alpha, beta are the weighted least-squares line through the median
per-size times (``mpipar.measure.fit``), and gamma is the slope of a timed
in-place ``np.add`` of float32 over the same sizes (>= 16 KiB), every rank adding
at once for ``"contention"``, rank 0 alone for ``"pingpong"``.

kappa, the price per byte of a collective's private copy into fresh memory, is the
slope of a timed ``a.copy()`` (a new array each time) over the same sizes (>= 16 KiB),
every rank copying at once for ``"contention"``, rank 0 alone for ``"pingpong"``.

The software overhead o (LogGP's o; Alexandrov et al. 1995) is measured beside
the contended exchange, in alternating trials at the same sizes: one step of a
hand-written algorithm on a :class:`~mpipar.collectives.channel.Channel` (its
tally, the Sendrecv, the combine of the arriving block: a ring reduce-scatter's
step) against the bare ``comm.Sendrecv`` of the same bytes. o = the step line's
intercept minus the raw line's. ``"pingpong"`` leaves o = 0: that is the model as
it was before o, for comparison.

Where one line through the exchange times misses by a lot, the per-byte constants get
a second set from the size where the cost per byte changes (the caches; ``fit.cost_model``,
``fit.find_break``). Under ``"contention"`` every algorithm, the library's included, is then
timed on a payload of one element per rank: what its formula does not explain is its
per-call overhead (``CostModel.call``).

Every rank gets rank 0's numbers (all ranks measure under ``"contention"``; the
slowest rank's time is already the same on every rank). About a second.
"""
from dataclasses import replace
import time
from typing import NamedTuple

from mpi4py import MPI
import numpy as np

from . import fit
from .cost_model import CostModel

SIZES = (8, 1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22)  #: bytes, multiples of 4
LARGEST = 1 << 24  #: the largest size ``sizes_up_to`` adds
METHODS = ("contention", "pingpong")
_TAG = 0x6D71


class Calibration(NamedTuple):
    """What calibrate measured: the model, and the per-trial times it was fitted to."""

    model: CostModel
    method: str
    sizes: tuple
    raw: list  #: raw[k][i]: trial k, size i: a bare exchange (or ping-pong one-way) in seconds
    step: list  #: step[k][i]: the same with a Channel step around it (None for "pingpong")
    add: list  #: add[k][i]: an in-place np.add of sizes[i] bytes
    copy: list  #: copy[k][i]: a copy of sizes[i] bytes into a new array

    def fits(self):
        """One fit per trial: {alpha, beta, o} -- the constants' spread over repeats."""
        return fit.fits_per_trial(self.sizes, self.raw, self.step)


def sizes_up_to(n):
    """SIZES, then 4x steps up to n bytes (at most LARGEST): for a benchmark that predicts
    messages larger than SIZES, constants fitted on such messages too. Beyond the caches every
    byte costs more: on the 16-core machine at p = 16, fitting up to 16 MiB instead of 4 MiB
    moved beta 0.31 -> 0.41 ns/B, gamma 0.080 -> 0.107 and kappa 0.066 -> 0.104, and the
    predictions of ``bench collectives`` from 64 KiB to 16 MiB within 25 % from 21 to 40 of 60.
    """
    out = list(SIZES)
    while out[-1] < min(n, LARGEST):
        out.append(out[-1] * 4)
    return tuple(out)


def rounds(n):
    """Messages per trial at n bytes: about 4 MiB moved, at least 3, at most 200."""
    return max(3, min(200, (1 << 22) // max(n, 1)))


def calibrate(comm, method="contention", sizes=SIZES, trials=7):
    """Measure and fit on ``comm`` (collective); a :class:`Calibration` on every rank."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    sizes = tuple(int(n) // 4 * 4 or 4 for n in sizes)
    p = comm.Get_size()
    if method == "contention":
        raw, step = _exchange_trials(comm, sizes, trials)
        add = _add_trials(comm, sizes, trials)
        copy = _add_trials(comm, sizes, trials, copy=True)
        alone = _pingpong_trials(comm, sizes, trials)
        where = (f"contention: every rank of {p} in a ring Sendrecv at once, slowest rank; "
                 f"o: Channel step - raw Sendrecv; per call: measured - formula at 1 element per rank")
    else:
        local = None
        if comm.Get_rank() == 0:  # the local times of rank 0 alone
            local = ([[_add_time(n) for n in sizes] for _ in range(trials)],
                     [[_add_time(n, copy=True) for n in sizes] for _ in range(trials)])
        add, copy = comm.bcast(local, root=0)
        raw, step, alone = _pingpong_trials(comm, sizes, trials), None, None
        where = (f"ping-pong 0<->1 in a job of {p} ranks" if p > 1 else "ping-pong: self-messages, 1 rank")
    model = fit.cost_model(sizes, raw, step, add, copy, alone, f"calibrated ({where})")
    if method == "contention":
        model = replace(model, call=_call_overheads(comm, model, trials))
    return Calibration(model, method, sizes, raw, step, add, copy)


def _call_overheads(comm, model, trials, rounds=10):
    """((op, algorithm, seconds), ...): each collective call with one element per rank
    (check=False, the slowest rank, the fastest trial), minus what ``model`` predicts for it,
    floored at 0: the Python of a call outside its formula. Outside any open ledger.

    The fastest trial, not the median: this cost is fixed, and on a busy machine a burst of
    noise can outlast several trials of a few calls (on 2 cores, medians of 7 trials of
    18-22 us calls came out at 73 and 112 us)."""
    from .. import collectives  # not at the top: the collectives import the cost model
    from . import ledger
    p = comm.Get_size()
    if p == 1:
        return ()
    x = np.ones(p, np.float32)  # one element per rank: allgather's share is x[:1]
    cases = [(op, alg) for op, table in collectives.ALGORITHMS.items() for alg in (*table, "mpi")]
    times = []
    with ledger.paused():
        for op, alg in cases:
            per_trial = []
            for _trial in range(trials + 1):  # trial 0 warms up
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(rounds):
                    getattr(collectives, op)(comm, x[:1] if op == "allgather" else x,
                                             algorithm=alg, check=False)
                per_trial.append((time.perf_counter() - t0) / rounds)
            times.append(per_trial[1:])
    slowest = np.asarray(_slowest(comm, np.ravel(times))).reshape(len(cases), trials)
    return tuple((op, alg, max(0.0, float(np.min(t)) - model.predict(op, alg, p, x.nbytes)))
                 for (op, alg), t in zip(cases, slowest))


# --- contention: every rank at once --------------------------------------------------------

def _slowest(comm, seconds):
    from ..collectives.channel import quiet_wait  # local import: the model stays MPI-light
    mine, out = np.array(seconds, np.float64), np.empty(len(seconds), np.float64)
    quiet_wait(comm.Iallreduce(mine, out, op=MPI.MAX))
    return out.tolist()


def _exchange_trials(comm, sizes, trials):
    """raw[k][i], step[k][i]: the slowest rank's seconds per ring exchange, alternating."""
    from ..collectives.blocks import combine
    from ..collectives.channel import Channel
    p, rank = comm.Get_size(), comm.Get_rank()
    right, left = (rank + 1) % p, (rank - 1) % p
    bufs = {n: (np.ones(n // 4, np.float32), np.empty(n // 4, np.float32),
                np.ones(n // 4, np.float32)) for n in sizes}

    def raw_round(n):
        send, part, _ = bufs[n]
        comm.Sendrecv([send, MPI.BYTE], right, _TAG, [part, MPI.BYTE], left, _TAG)

    def step_round(n, ch):
        send, part, mine = bufs[n]
        ch.step()
        ch.sendrecv(send, right, part, left)
        combine("sum", part, mine, out=mine)

    def timed(fn, n, ch=None):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(rounds(n)):
            fn(n) if ch is None else fn(n, ch)
        return (time.perf_counter() - t0) / rounds(n)

    raw, step = [], []
    for trial in range(trials + 1):  # trial 0 warms up
        ch = Channel(comm, tag=_TAG)
        r_k, s_k = [], []
        for n in sizes:
            r_k.append(timed(raw_round, n))
            s_k.append(timed(step_round, n, ch))
        r_k, s_k = _slowest(comm, r_k), _slowest(comm, s_k)
        if trial:
            raw.append(r_k)
            step.append(s_k)
    return raw, step


def _add_trials(comm, sizes, trials, copy=False):
    """add[k][i]: the slowest rank's seconds for an in-place float32 add (``copy``: a copy
    into a new array), all ranks at once."""
    arrays = {n: (np.ones(n // 4, np.float32), np.ones(n // 4, np.float32)) for n in sizes}
    out = []
    for trial in range(trials + 1):
        row = []
        for n in sizes:
            a, b = arrays[n]
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(rounds(n)):
                a.copy() if copy else np.add(a, b, out=a)
            row.append((time.perf_counter() - t0) / rounds(n))
        row = _slowest(comm, row)
        if trial:
            out.append(row)
    return out


# --- ping-pong: ranks 0 and 1 alone --------------------------------------------------------

def _pingpong_trials(comm, sizes, trials):
    """raw[k][i]: one-way seconds between ranks 0 and 1, the others idle, on every rank."""
    from ..collectives.channel import quiet_wait
    raw = None
    if comm.Get_rank() == 0:
        peer = 1 if comm.Get_size() > 1 else 0
        raw = [[_pingpong(comm, peer, n) for n in sizes] for _ in range(trials)]
    elif comm.Get_rank() == 1:
        _pingpong_echo(comm, sizes, trials)
    quiet_wait(comm.Ibarrier())
    return comm.bcast(raw, root=0)


def _pingpong(comm, peer, n):
    """One trial's one-way seconds for an n-byte message between rank 0 and ``peer``."""
    buf, back = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    for _ in (False, True):  # a warm-up pass, then the timed one
        t0 = time.perf_counter()
        for _ in range(rounds(n)):
            if peer == 0:
                comm.Sendrecv(buf, dest=0, recvbuf=back, source=0)
            else:
                comm.Send(buf, dest=peer)
                comm.Recv(back, source=peer)
    return (time.perf_counter() - t0) / rounds(n) / (1 if peer == 0 else 2)


def _pingpong_echo(comm, sizes, trials):
    for _ in range(trials):
        for n in sizes:
            buf = np.zeros(n, np.uint8)
            for _ in range(2 * rounds(n)):
                comm.Recv(buf, source=0)
                comm.Send(buf, dest=0)


def _add_time(n, copy=False):
    a, b = np.ones(n // 4, np.float32), np.ones(n // 4, np.float32)
    np.add(a, b, out=a)
    t0 = time.perf_counter()
    for _ in range(rounds(n)):
        a.copy() if copy else np.add(a, b, out=a)
    return (time.perf_counter() - t0) / rounds(n)
