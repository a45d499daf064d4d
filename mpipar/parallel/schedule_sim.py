"""Check a pipeline schedule and time it: when every step starts and ends, how long each
rank idles (the bubble) and how many micro-batches' activations it holds at most.

The machine being simulated: each rank runs its list strictly in order, one step at a
time; a step starts when its rank is free and every step it depends on
(``schedule_comm.dependencies``) has finished, plus ``comm`` time units for a dependency
on another rank (the message's latency). Nothing else: no contention, equal stages.
Because it raises a ValueError naming the rank and step for any schedule that could
not finish, an executor can call :func:`simulate` on every rank before its first
message and fail identically everywhere instead of hanging.

Costs. ``cost`` gives the time of one full stage's (a rank's ``1/p`` of the model)
``"F"`` forward, ``"B"`` input-gradient backward and ``"W"`` weight-gradient
backward of one micro-batch (missing keys are 0). A fused backward (GPipe, 1F1B,
interleaved) computes both gradients and takes ``B + W``; ZB-H1's split steps take
``B`` and ``W``. A chunk of the interleaved schedule holds ``1/v`` of a stage, so its
steps take ``1/v`` of these. The default, ``F = B = W = 1``, is Qi et al. 2024's
``T_F = T_B = T_W`` (backward twice the forward). Integer and Fraction costs give
exact Fraction times; floats give floats. ``cost`` may also be a list of such dicts,
one per rank, for stages of unequal work (the first with the embedding, the last with
the LM head and the loss).
"""
from fractions import Fraction
from numbers import Rational
from typing import NamedTuple

from .schedule_comm import dependencies
from .schedules import KINDS, Step

__all__ = ["DEFAULT_COST", "Timeline", "check", "simulate", "step_durations"]

DEFAULT_COST = {"F": 1, "B": 1, "W": 1}


class Timeline(NamedTuple):
    """What :func:`simulate` measured; per-rank tuples are indexed by rank, and
    ``start[r][k]`` / ``end[r][k]`` belong to ``schedule.steps[r][k]``.

    ``bubble[r] = idle[r] / makespan``: the idle fraction of the whole step
    (``idle = makespan - busy``, the time before the first step included).
    ``peak_in_flight[r]``: the most (micro-batch, chunk) pairs whose forward has
    finished and whose last use (B when fused, W when split) has not.
    ``durations``: how long a step of each kind took (:func:`step_durations`); a tuple
    of such dicts, one per rank, where the ranks' costs differ.
    ``peak_activations[r] = peak_in_flight[r] / v``: the same in micro-batches' worth
    of a full stage's activations (an interleaved chunk holds ``1/v`` of them).
    """

    schedule: object
    durations: dict
    comm: object
    start: tuple[tuple, ...]
    end: tuple[tuple, ...]
    makespan: object
    busy: tuple
    idle: tuple
    bubble: tuple
    peak_in_flight: tuple
    peak_activations: tuple

    @property
    def mean_bubble(self):
        """Idle time over all ranks as a fraction of ``p * makespan``."""
        return _fraction(sum(self.idle), len(self.idle) * self.makespan)

    def when(self, rank, step):
        """``(start, end)`` of ``step`` on ``rank``."""
        k = self.schedule.steps[rank].index(step)
        return self.start[rank][k], self.end[rank][k]


def check(schedule):
    """Raise ValueError, naming the rank and step, unless every rank runs F and B (and W,
    when any rank runs a W) exactly once for every micro-batch and each of its chunks,
    and nothing else."""
    p, m, v = schedule.p, schedule.m, schedule.v
    if len(schedule.steps) != p:
        raise ValueError(f"the schedule has {len(schedule.steps)} rank lists for p = {p} ranks")
    kinds = KINDS if schedule.split_backward else ("F", "B")
    for rank, steps in enumerate(schedule.steps):
        seen = {}
        for k, step in enumerate(steps):
            if step.kind not in kinds or not 0 <= step.micro < m or not 0 <= step.chunk < v:
                raise ValueError(f"rank {rank}: step {k}, {step}, is not one of this schedule's steps "
                                 f"(kinds {', '.join(kinds)}, micro-batches 0..{m - 1}, chunks 0..{v - 1})")
            if step in seen:
                raise ValueError(f"rank {rank}: {step.label(v)} appears twice (steps {seen[step]} and {k})")
            seen[step] = k
        for kind in kinds:
            for micro in range(m):
                for chunk in range(v):
                    if (kind, micro, chunk) not in seen:
                        raise ValueError(f"rank {rank}: {Step(kind, micro, chunk).label(v)} is missing")


def _fraction(a, b):
    """a / b, exact (a Fraction) for integers and Fractions; 0 when b is 0."""
    if not b:
        return 0
    return Fraction(a, b) if isinstance(a, Rational) and isinstance(b, Rational) else a / b


def _per_chunk(value, v):
    return value if v == 1 else _fraction(value, v)


def step_durations(schedule, cost=None):
    """``{"F": t, "B": t, "W": t}``: how long one step of each kind takes in ``schedule``
    under ``cost`` (see the module docstring: B + W for a fused backward, 1/v per chunk)."""
    cost = dict(DEFAULT_COST if cost is None else cost)
    unknown = set(cost) - set(KINDS)
    if unknown:
        raise ValueError(f"cost keys must be among F, B, W; got {sorted(unknown)}")
    t = {kind: cost.get(kind, 0) for kind in KINDS}
    if any(x < 0 for x in t.values()):
        raise ValueError(f"costs must be non-negative, got {t}")
    if not schedule.split_backward:
        t["B"] = t["B"] + t["W"]
    return {kind: _per_chunk(x, schedule.v) for kind, x in t.items()}


def _check_local_order(schedule, deps):
    for rank, steps in enumerate(schedule.steps):
        position = {step: k for k, step in enumerate(steps)}
        for k, step in enumerate(steps):
            for dep_rank, dep in deps[rank][k]:
                if dep_rank == rank and position[dep] > k:
                    raise ValueError(f"rank {rank}: {step.label(schedule.v)} (step {k}) needs "
                                     f"{dep.label(schedule.v)}, which comes later (step {position[dep]}) "
                                     f"in rank {rank}'s list")


def _deadlock(schedule, deps, nxt, finish):
    waits = []
    for rank, steps in enumerate(schedule.steps):
        if nxt[rank] < len(steps):
            step = steps[nxt[rank]]
            missing = [f"rank {r}'s {s.label(schedule.v)}" for r, s in deps[rank][nxt[rank]]
                       if (r, s) not in finish]
            waits.append(f"rank {rank} waits at {step.label(schedule.v)} (step {nxt[rank]}) "
                         f"for {' and '.join(missing)}")
    return ValueError("the schedule cannot complete: " + "; ".join(waits))


def _peaks(schedule):
    last_use = "W" if schedule.split_backward else "B"
    peaks = []
    for steps in schedule.steps:
        held = peak = 0
        for step in steps:
            held += (step.kind == "F") - (step.kind == last_use)
            peak = max(peak, held)
        peaks.append(peak)
    return tuple(peaks)


def simulate(schedule, cost=None, comm=0):
    """Run ``schedule`` on the simulated machine (module docstring) and return its
    :class:`Timeline`. ``cost``: ``{"F": .., "B": .., "W": ..}`` per full stage
    (default :data:`DEFAULT_COST`); ``comm``: latency added to every dependency on
    another rank.

    Raises ValueError naming the rank and step if a step is missing, duplicated or
    foreign (:func:`check`), if a step comes before a step of its own rank it needs,
    or if the ranks would wait for each other forever.
    """
    check(schedule)
    if comm < 0:
        raise ValueError(f"comm latency must be non-negative, got {comm}")
    p = schedule.p
    if isinstance(cost, (list, tuple)):
        if len(cost) != p:
            raise ValueError(f"{len(cost)} costs for {p} ranks: give one dict per rank")
        durations = [step_durations(schedule, c) for c in cost]
    else:
        durations = [step_durations(schedule, cost)] * p
    deps = [[dependencies(schedule, r, s) for s in steps] for r, steps in enumerate(schedule.steps)]
    _check_local_order(schedule, deps)
    start = [[None] * len(steps) for steps in schedule.steps]
    end = [[None] * len(steps) for steps in schedule.steps]
    finish = {}  # (rank, step) -> end time
    nxt, free = [0] * p, [0] * p
    left = sum(len(steps) for steps in schedule.steps)
    while left:
        progressed = False
        for rank, steps in enumerate(schedule.steps):
            while nxt[rank] < len(steps):
                k = nxt[rank]
                if any(dep not in finish for dep in deps[rank][k]):
                    break
                t = max([free[rank]] + [finish[(r, s)] + (comm if r != rank else 0)
                                        for r, s in deps[rank][k]])
                start[rank][k], end[rank][k] = t, t + durations[rank][steps[k].kind]
                finish[(rank, steps[k])] = free[rank] = end[rank][k]
                nxt[rank], left, progressed = k + 1, left - 1, True
        if not progressed:
            raise _deadlock(schedule, deps, nxt, finish)
    makespan = max(free)
    busy = tuple(sum(durations[r][s.kind] for s in steps) for r, steps in enumerate(schedule.steps))
    idle = tuple(makespan - b for b in busy)
    bubble = tuple(_fraction(i, makespan) for i in idle)
    peaks = _peaks(schedule)
    duration = durations[0] if all(d == durations[0] for d in durations) else tuple(durations)
    return Timeline(schedule, duration, comm, tuple(map(tuple, start)), tuple(map(tuple, end)),
                    makespan, busy, idle, bubble, peaks, tuple(_per_chunk(x, schedule.v) for x in peaks))
