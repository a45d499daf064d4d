"""Closed forms for pipeline schedules: the step's length, the bubble and the activations
held, each checked against ``schedule_sim.simulate`` by the tests (all ``p <= 6``,
``m <= 12``, several costs).

Notation: ``p`` ranks, ``m`` micro-batches, ``v`` chunks per rank; ``t_F``, ``t_B``,
``t_W`` a full stage's forward, input-gradient and weight-gradient times (``cost``, as
in ``schedule_sim``; a fused backward takes ``t_B + t_W``), ``t = t_F + t_B + t_W``.
Every rank computes for ``m * t`` (the ideal time); the rest of the step is its bubble.

Makespan (exact, equal stages, no communication latency):

* GPipe, 1F1B: ``(m + p - 1) * t`` (Huang et al. 2019; Narayanan et al. 2021);
  with ``t_F = t_B + t_W = 1``: ``2 (m + p - 1)`` time steps.
* interleaved, ``m % p == 0``: ``(m + (p - 1) / v) * t`` (Narayanan et al. 2021,
  Megatron-LM, sec. 2.2.2: bubble time ``(p - 1) * (t_f + t_b) / v``); with chunk
  steps of unit length (``t_F = t_B + t_W = v``): ``2 (v m + p - 1)`` steps.
* ZB-H1, when ``t_W <= min(t_F, t_B)``: ``(m + p - 1)(t_F + t_B) + max(m - p + 1, 1) t_W``,
  i.e. ``m t + (p - 1)(t_F + t_B - t_W)`` for ``m >= p`` (Qi et al. 2024, sec. 3.1)
  and ``(m + p - 1)(t_F + t_B) + t_W`` for ``m < p``; with ``t_F = t_B = t_W = 1``:
  ``3 m + p - 1`` (``m >= p``) and ``2 (m + p) - 1`` (``m < p``). With a larger ``t_W``
  the late W passes delay the B chain and no closed form is claimed.

Bubble, two definitions (both reported; they differ by what they divide by):

* of the step: ``bubble / makespan`` -- GPipe and 1F1B ``(p - 1) / (m + p - 1)``
  (GPipe's paper), interleaved ``(p - 1) / (v m + p - 1)``, ZB-H1 with
  ``t_F = t_B = t_W``, ``m >= p``: ``(p - 1) / (3 m + p - 1)``. This is what the
  simulator measures per rank (idle / makespan).
* of the ideal time: ``bubble / (m t)`` -- ``(p - 1) / m`` (Megatron-LM's paper,
  sec. 2.2.1), interleaved ``(p - 1) / (v m)``, ZB-H1 ``(p - 1) / (3 m)``: a third
  of 1F1B's bubble time ``(p - 1) * 3`` at equal costs.
"""
from fractions import Fraction
from numbers import Rational

from .schedule_sim import DEFAULT_COST

__all__ = ["predicted_bubble", "predicted_bubble_of_ideal", "predicted_makespan", "predicted_peak"]


def _ratio(a, b):
    return Fraction(a, b) if isinstance(a, Rational) and isinstance(b, Rational) else a / b


def _costs(cost):
    cost = DEFAULT_COST if cost is None else cost
    return cost.get("F", 0), cost.get("B", 0), cost.get("W", 0)


def _check(name, p, m, v):
    if name not in ("gpipe", "1f1b", "interleaved", "zb-h1"):
        raise ValueError(f"unknown pipeline schedule {name!r}")
    if name == "interleaved" and (v < 2 or m % p):
        raise ValueError("the interleaved schedule needs v >= 2 and m a multiple of p")
    if name != "interleaved" and v != 1:
        raise ValueError(f"{name} runs one chunk per rank (v = 1), got v = {v}")


def predicted_makespan(name, p, m, v=1, cost=None):
    """The length of one training step of schedule ``name`` (module docstring)."""
    _check(name, p, m, v)
    t_f, t_b, t_w = _costs(cost)
    t = t_f + t_b + t_w
    if name in ("gpipe", "1f1b"):
        return (m + p - 1) * t
    if name == "interleaved":
        return m * t + _ratio((p - 1) * t, v)
    if t_w > min(t_f, t_b):
        raise ValueError(f"ZB-H1's closed form needs t_W <= min(t_F, t_B); got {t_f}, {t_b}, {t_w}: "
                         "simulate it")
    return (m + p - 1) * (t_f + t_b) + max(m - p + 1, 1) * t_w


def _bubble_time(name, p, m, v, cost):
    t_f, t_b, t_w = _costs(cost)
    return predicted_makespan(name, p, m, v, cost) - m * (t_f + t_b + t_w)


def predicted_bubble(name, p, m, v=1, cost=None):
    """Each rank's idle fraction of the step, ``bubble / makespan``: GPipe and 1F1B
    ``(p - 1) / (m + p - 1)``, interleaved ``(p - 1) / (v m + p - 1)``, ZB-H1
    ``(p - 1) / (3 m + p - 1)`` at equal costs and ``m >= p``."""
    return _ratio(_bubble_time(name, p, m, v, cost), predicted_makespan(name, p, m, v, cost))


def predicted_bubble_of_ideal(name, p, m, v=1, cost=None):
    """The bubble as a fraction of the ideal time ``m t`` (the other definition): GPipe and
    1F1B ``(p - 1) / m``, interleaved ``(p - 1) / (v m)``, ZB-H1 ``(p - 1) / (3 m)`` at
    equal costs and ``m >= p``."""
    t_f, t_b, t_w = _costs(cost)
    return _ratio(_bubble_time(name, p, m, v, cost), m * (t_f + t_b + t_w))


def predicted_peak(name, p, m, v=1, rank=0):
    """The most (micro-batch, chunk) activations rank ``rank`` holds at once
    (``Timeline.peak_in_flight``): GPipe ``m``; 1F1B ``min(p - rank, m)``; ZB-H1
    ``min(p, m)`` on every rank (its W passes start late, holding what 1F1B's first
    rank holds); interleaved ``min(w + 1, v m)`` chunks with
    ``w = (p - rank - 1) * 2 + (v - 1) * p`` warm-up forwards -- on rank 0
    ``v p + p - 1`` chunks, ``p (1 + (p - 1) / (p v))`` stages' worth (Narayanan et
    al. 2021, sec. 2.2.2, the interleaved schedule's extra memory)."""
    _check(name, p, m, v)
    if name == "gpipe":
        return m
    if name == "1f1b":
        return min(p - rank, m)
    if name == "zb-h1":
        return min(p, m)
    return min((p - rank - 1) * 2 + (v - 1) * p + 1, v * m)
