"""The one timing loop of the benchmarks: barrier, warm-up, trials, the slowest rank, medians.

    figures = time_call(comm, lambda: model.forward(tokens), trials=5, warmup=1)
    figures["seconds"]                         # one per trial, the slowest rank's
    per_block = run_trials(comm, {"without": a, "with": b}, trials=41)   # alternating
    medians(per_block["with"])                 # {"seconds": median, ...}

One trial of a call: every rank meets at a barrier, runs the call ``repeat`` times
under one clock and divides by ``repeat``; the trial's time is the slowest rank's
(MPI.MAX), since parallel work is done when its last rank is. Ranks that finish
early wait for that maximum asleep (:func:`~mpipar.collectives.channel.quiet_wait`),
leaving their core to the ranks still working: on an oversubscribed laptop a
spinning wait would slow down what is being measured. Several calls are timed
alternately, trial by trial, so that they all see the same background load.

A call may also report figures it measured itself (seconds of a phase inside it,
such as the communication in a forward or the backward of a training step): give
``figures``, a function of the call's return value computed after the clock stops.
They are reduced in the same way; a ``"seconds"`` among them replaces the loop's
wall time (a call that times itself more precisely, like a training step).
"""
import math
import time

from mpi4py import MPI
import numpy as np

from ..collectives.channel import quiet_wait

TARGET_TRIAL_SECONDS = 5e-3  #: calls_per_trial: a trial of small messages lasts at least this long
MAX_REPEAT = 10_000  #: calls_per_trial: never more calls than this in one trial


def slowest(comm, seconds):
    """The largest of every rank's ``seconds`` -- a number, or a dict of numbers with the
    same keys on every rank -- on every rank. Early ranks sleep while they wait."""
    keys = list(seconds) if isinstance(seconds, dict) else None
    mine = np.array([seconds[k] for k in keys] if keys else [seconds], dtype=np.float64)
    out = np.empty_like(mine)
    quiet_wait(comm.Iallreduce(mine, out, op=MPI.MAX))
    return dict(zip(keys, out.tolist())) if keys else float(out[0])


def one_trial(comm, call, repeat=1, figures=None):
    """This rank's figures of one trial: barrier, ``repeat`` calls under one clock ->
    {"seconds": per call, and ``figures(last return value)`` if given}."""
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(repeat):
        result = call()
    out = {"seconds": (time.perf_counter() - t0) / repeat}
    if figures is not None:
        out.update(figures(result))
    return out


def run_trials(comm, calls, trials, warmup=0, repeat=1, figures=None):
    """Time every call of ``calls`` (name -> function of no arguments), alternating.

    ``warmup`` untimed rounds (each call once, in turn), then ``trials`` rounds of one
    trial of each call (see :func:`one_trial`), each reduced to the slowest rank's.
    Returns {name: {"seconds": [one per trial], other figure: [...], ...}}.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    out = {name: {} for name in calls}
    for _ in range(trials):
        for name, call in calls.items():
            for key, value in slowest(comm, one_trial(comm, call, repeat, figures)).items():
                out[name].setdefault(key, []).append(value)
    return out


def time_call(comm, call, trials, warmup=0, repeat=1, figures=None):
    """:func:`run_trials` of one call: {"seconds": [one per trial], ...}."""
    return run_trials(comm, {None: call}, trials, warmup, repeat, figures)[None]


def calls_per_trial(comm, call, warmup, target=TARGET_TRIAL_SECONDS, most=MAX_REPEAT):
    """Run ``warmup`` (at least 1) untimed calls, each on its own clock. The fastest of
    them on the slowest rank (so every rank gets the same number) sets how many calls
    a trial needs to last ``target`` seconds: 1 for a call that takes that long by
    itself, never more than ``most``."""
    fastest = math.inf
    for _ in range(warmup):
        t0 = time.perf_counter()
        call()
        fastest = min(fastest, time.perf_counter() - t0)
    per_call = slowest(comm, fastest)
    return max(1, min(most, math.ceil(target / max(per_call, 1e-9))))


def medians(figures):
    """{"seconds": [per trial], ...} -> {"seconds": median, ...}."""
    return {key: float(np.median(values)) for key, values in figures.items()}
