"""Pipeline schedules for people: the step lists as a table, the simulated timeline as a
text Gantt chart (one row per rank, time across), and the bubble and memory beside
their formulas.

A cell is one step: ``F3`` the forward of micro-batch 3, ``B3`` its backward, ``W3``
its weight-gradient part (ZB-H1); with ``v > 1`` chunks the chunk follows the dot,
``F3.1``. A step longer than one time unit continues with ``-``; idle time is ``.``.
Wide charts wrap into blocks, each under its own time ruler.
"""
from fractions import Fraction
from math import gcd

from .schedule_formulas import predicted_bubble, predicted_bubble_of_ideal, predicted_makespan, predicted_peak
from .schedule_sim import simulate

__all__ = ["chart", "summary", "table"]


def _title(schedule):
    v = f", v = {schedule.v}" if schedule.v > 1 else ""
    return f"{schedule.name}: p = {schedule.p} ranks, m = {schedule.m} micro-batches{v}"


def table(schedule):
    """Each rank's steps, in the order it runs them, one line per rank."""
    lines = [_title(schedule)]
    lines += [f"rank {r}: " + " ".join(s.label(schedule.v) for s in steps)
              for r, steps in enumerate(schedule.steps)]
    return "\n".join(lines)


def _exact(t):
    return Fraction(t).limit_denominator(10**6)


def _quantum(timeline, max_cells):
    """The chart's time unit: the largest that divides every start and end time, unless
    that needs more than ``max_cells`` columns; then the shortest step (times rounded)."""
    times = {_exact(t) for row in timeline.start + timeline.end for t in row}
    den = 1
    for t in times:
        den = den * t.denominator // gcd(den, t.denominator)
    num = 0
    for t in times:
        num = gcd(num, int(t * den))
    q = Fraction(num, den) if num else Fraction(1)
    if _exact(timeline.makespan) / q > max_cells:
        q = min((_exact(d) for d in timeline.durations.values() if d > 0), default=Fraction(1))
    return q


def _ruler(first, count, q, cw):
    """Time stamps over the columns, each where its column starts, as many as fit."""
    out = ""
    for i in range(count):
        col, stamp = i * cw, f"{float((first + i) * q):g}"
        if (not out or len(out) < col) and col + len(stamp) <= count * cw:
            out += " " * (col - len(out)) + stamp
    return out


def chart(schedule, timeline=None, width=120):
    """A text Gantt chart of ``timeline`` (default: ``simulate(schedule)``, unit costs):
    one row per rank, one column per time unit, wrapped to ``width`` characters."""
    timeline = simulate(schedule) if timeline is None else timeline
    v = schedule.v
    labels = [s.label(v) for steps in schedule.steps for s in steps]
    cw = max(map(len, labels), default=2) + 1
    q = _quantum(timeline, max_cells=2000)
    n_cells = max(1, round(_exact(timeline.makespan) / q))
    rows = []
    for r, steps in enumerate(schedule.steps):
        cells = [".".ljust(cw)] * n_cells
        for step, t0, t1 in zip(steps, timeline.start[r], timeline.end[r]):
            c0 = min(round(_exact(t0) / q), n_cells - 1)
            c1 = max(c0 + 1, round(_exact(t1) / q))
            cells[c0] = step.label(v).ljust(cw)
            for c in range(c0 + 1, min(c1, n_cells)):
                cells[c] = "-" * (cw - 1) + " "
        rows.append(cells)
    head = [f"rank {r} " for r in range(schedule.p)]
    hw = max(map(len, head))
    per_block = max(1, (width - hw) // cw)
    unit = f"{float(q):g}"
    lines = [f"{_title(schedule)}; one column = {unit} time unit{'s' if q != 1 else ''}, "
             f"F = {_num(timeline.durations['F'])}, B = {_num(timeline.durations['B'])}"
             + (f", W = {_num(timeline.durations['W'])}" if schedule.split_backward else "")
             + f"; step took {float(timeline.makespan):g}"]
    for first in range(0, n_cells, per_block):
        count = min(per_block, n_cells - first)
        lines.append("t".ljust(hw) + _ruler(first, count, q, cw))
        for h, cells in zip(head, rows):
            lines.append(h.ljust(hw) + "".join(cells[first:first + count]).rstrip())
    return "\n".join(lines)


def _num(x):
    return f"{float(x):g}"


def _fmt(x):
    return f"{float(x):.3f}"


def summary(schedule, timeline=None):
    """Per rank: busy and idle time, the measured bubble (idle / makespan) and peak
    activations held, beside the formulas of ``schedule_formulas`` (both bubble
    definitions)."""
    timeline = simulate(schedule) if timeline is None else timeline
    name, p, m, v = schedule.name, schedule.p, schedule.m, schedule.v
    cost = _full_stage_cost(timeline)
    lines = [f"{_title(schedule)}: step {float(timeline.makespan):g} time units"]
    try:
        lines.append(f"  formula: step {float(predicted_makespan(name, p, m, v, cost)):g}, bubble "
                     f"{_fmt(predicted_bubble(name, p, m, v, cost))} of the step "
                     f"(= {_fmt(predicted_bubble_of_ideal(name, p, m, v, cost))} of the ideal time)"
                     + (" without communication latency" if timeline.comm else ""))
    except ValueError as e:
        lines.append(f"  formula: none ({e})")
    held = "peak chunks held (formula), in stages" if v > 1 else "peak micro-batches held (formula)"
    lines.append(f"  rank   busy   idle  bubble  {held}")
    for r in range(p):
        lines.append(f"  {r:4d} {_num(timeline.busy[r]):>6} {_num(timeline.idle[r]):>6} "
                     f"{_fmt(timeline.bubble[r]):>7}  {timeline.peak_in_flight[r]:4d} "
                     f"({predicted_peak(name, p, m, v, r)})"
                     + (f" = {_num(timeline.peak_activations[r])}" if v > 1 else ""))
    return "\n".join(lines)


def _full_stage_cost(timeline):
    """The per-stage cost that produced ``timeline`` (undoing 1/v and the fused B + W)."""
    v, d = timeline.schedule.v, timeline.durations
    if timeline.schedule.split_backward:
        return {k: d[k] * v for k in "FBW"}
    return {"F": d["F"] * v, "B": d["B"] * v, "W": 0}
