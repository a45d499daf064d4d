"""Pipeline schedules as data: for every rank, the ordered list of steps it runs.

A pipeline cuts the model into ``p * v`` consecutive *model stages*; rank ``r`` holds
the ``v`` chunks ``c = 0 .. v-1``, chunk ``c`` being model stage ``s = c * p + r``
(Megatron's interleaved assignment; with ``v = 1`` the stage is the rank). The batch
is cut into ``m`` micro-batches. A :class:`Schedule` says, per rank, in which order
that rank runs its :class:`Step` s; an executor runs each list strictly in order, a
simulator (``schedule_sim``) times it, ``schedule_chart`` prints it, and
``schedule_comm`` says which messages each step waits for and sends.

Step kinds (the names of Qi et al. 2024):

* ``"F"``: forward of one micro-batch through this rank's chunk.
* ``"B"``: backward. In a *fused* schedule (GPipe, 1F1B, interleaved) the whole
  backward: input gradient and weight gradient. In a *split* schedule (ZB-H1,
  ``Schedule.split_backward``) only the input gradient, the part the previous
  stage waits for.
* ``"W"``: the weight-gradient part of a split backward; nobody waits for it.

The four schedules:

* :func:`gpipe` -- all forwards, then all backwards (Huang et al. 2019, "GPipe").
* :func:`one_f_one_b` -- PipeDream-Flush (Narayanan et al. 2021, "Memory-Efficient
  Pipeline-Parallel DNN Training"): ``p - r - 1`` warm-up forwards, then one forward
  and one backward in turn, then the remaining backwards.
* :func:`interleaved` -- interleaved 1F1B with ``v`` chunks per rank (Narayanan et
  al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM", sec. 2.2.2).
* :func:`zb_h1` -- ZB-H1 (Qi et al. 2024, "Zero Bubble Pipeline Parallelism",
  sec. 3.1): 1F1B with the backward split into B and W, each rank's W passes
  started late enough to fill the tail bubble without holding more activations
  than 1F1B's first rank.
"""
from operator import index
from typing import NamedTuple

__all__ = ["KINDS", "SCHEDULE_NAMES", "Schedule", "Step", "gpipe", "interleaved", "make_schedule",
           "one_f_one_b", "rank_and_chunk", "stage_of", "zb_h1"]

KINDS = ("F", "B", "W")


class Step(NamedTuple):
    """One step of a rank's list: ``kind`` ("F", "B" or "W", see the module docstring)
    of micro-batch ``micro`` through this rank's chunk ``chunk`` (0 unless interleaved)."""

    kind: str
    micro: int
    chunk: int = 0

    def label(self, v=1):
        """``F3`` (kind and micro-batch), or ``F3.1`` (and the chunk) when ``v > 1``."""
        return f"{self.kind}{self.micro}" + (f".{self.chunk}" if v > 1 else "")


class Schedule(NamedTuple):
    """A pipeline schedule: ``steps[r]`` is rank ``r``'s ordered tuple of :class:`Step` s.

    ``name``: one of :data:`SCHEDULE_NAMES`; ``p``: pipeline ranks; ``m``: micro-batches;
    ``v``: chunks (virtual stages) per rank, model stage ``c * p + r`` on rank ``r``.
    """

    name: str
    p: int
    m: int
    v: int
    steps: tuple[tuple[Step, ...], ...]

    @property
    def n_stages(self):
        """Model stages: ``p * v``."""
        return self.p * self.v

    @property
    def split_backward(self):
        """True when the backward is split into B (input gradient) and W (weight gradient)."""
        return any(step.kind == "W" for rank_steps in self.steps for step in rank_steps)


def stage_of(p, rank, chunk):
    """The model stage that rank ``rank``'s chunk ``chunk`` holds: ``chunk * p + rank``."""
    return chunk * p + rank


def rank_and_chunk(p, stage):
    """The (rank, chunk) holding model stage ``stage``: the inverse of :func:`stage_of`."""
    return stage % p, stage // p


def _sizes(p, m):
    p, m = index(p), index(m)
    if p < 1:
        raise ValueError(f"--pp (pipeline ranks) must be at least 1, got {p}")
    if m < 1:
        raise ValueError(f"--micro-batches must be at least 1, got {m}")
    return p, m


def _schedule(name, p, m, v, per_rank):
    return Schedule(name, p, m, v, tuple(tuple(steps) for steps in per_rank))


def gpipe(p, m):
    """GPipe's all-forward-all-backward (Huang et al. 2019, fig. 2c): every rank runs
    ``F0 .. F(m-1)``, then ``B0 .. B(m-1)``.

    Backwards run in micro-batch order (as picotron's AFAB and PyTorch's ScheduleGPipe
    do); with equal stage costs the reverse order takes as long. Every rank holds the
    activations of all ``m`` micro-batches at the turn; the bubble is
    ``(p - 1) / (m + p - 1)`` of the step (Huang et al. 2019, sec. 2.2:
    ``O((p - 1) / (m + p - 1))``).
    """
    p, m = _sizes(p, m)
    row = [Step("F", i) for i in range(m)] + [Step("B", i) for i in range(m)]
    return _schedule("gpipe", p, m, 1, [row] * p)


def _one_f_one_b_row(warmup, m):
    """Warm-up forwards, then forward/backward in turn, then the cool-down backwards."""
    steps = [Step("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        steps += [Step("F", warmup + i), Step("B", i)]
    return steps + [Step("B", i) for i in range(m - warmup, m)]


def one_f_one_b(p, m):
    """1F1B, PipeDream-Flush (Narayanan et al. 2021, "Memory-Efficient Pipeline-Parallel
    DNN Training", sec. 3.1; Megatron's ``forward_backward_pipelining_without_interleaving``).

    Rank ``r`` runs ``w = min(p - r - 1, m)`` warm-up forwards, then ``m - w`` pairs
    ``F(w + i), B(i)``, then the last ``w`` backwards. The same bubble as GPipe,
    ``(p - 1) / (m + p - 1)`` of the step, but rank ``r`` never holds more than
    ``min(p - r, m)`` micro-batches' activations (GPipe: ``m``).
    """
    p, m = _sizes(p, m)
    return _schedule("1f1b", p, m, 1, [_one_f_one_b_row(min(p - r - 1, m), m) for r in range(p)])


def interleaved(p, m, v=2):
    """Interleaved 1F1B (Narayanan et al. 2021, Megatron-LM, sec. 2.2.2; Megatron's
    ``forward_backward_pipelining_with_interleaving``): rank ``r`` holds ``v`` chunks
    (model stages ``c * p + r``) and runs ``v * m`` forwards and backwards of chunks.

    The ``k``-th forward of a rank is micro-batch ``(k // (p*v)) * p + k % p`` through
    chunk ``(k // p) % v``: micro-batches go through the chunks in groups of ``p``.
    Backwards take the same micro-batches through the chunks in reverse,
    ``v - 1 - (k // p) % v``. Rank ``r`` starts with
    ``min((p - r - 1) * 2 + (v - 1) * p, v * m)`` warm-up forwards, then alternates
    forward and backward, then finishes the backwards. The bubble shrinks by ``v``:
    ``(p - 1) / (v * m + p - 1)`` of the step (paper, sec. 2.2.2: bubble time
    ``(p - 1) * (t_f + t_b) / v``).

    Needs ``m % p == 0`` (as Megatron does: the groups of ``p``) and ``v >= 2``.
    Megatron (core 0.7) runs all forwards first when ``m == p``; mpipar uses the
    warm-up formula for every ``m``: with equal stage costs the step takes as long,
    and the later ranks hold fewer activations.
    """
    p, m = _sizes(p, m)
    v = index(v)
    if v < 2:
        raise ValueError(f"--virtual-stages must be at least 2 for the interleaved schedule, got {v} "
                         "(one chunk per rank is the 1f1b schedule)")
    if m % p:
        raise ValueError(f"--micro-batches ({m}) must be a multiple of --pp ({p}) "
                         "for the interleaved schedule")
    total, group = v * m, p * v

    def micro(k):
        return (k // group) * p + k % p

    forwards = [Step("F", micro(k), (k // p) % v) for k in range(total)]
    backwards = [Step("B", micro(k), v - 1 - (k // p) % v) for k in range(total)]
    rows = []
    for r in range(p):
        warmup = min((p - r - 1) * 2 + (v - 1) * p, total)
        steps = forwards[:warmup]
        for k in range(total - warmup):
            steps += [forwards[warmup + k], backwards[k]]
        rows.append(steps + backwards[total - warmup:])
    return _schedule("interleaved", p, m, v, rows)


def zb_h1(p, m):
    """ZB-H1 (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", sec. 3.1, fig. 3 top).

    The backward is split: ``B`` computes the input gradient (which the previous stage
    waits for), ``W`` the weight gradient (which nobody waits for). Rank ``r`` runs
    1F1B's ``w = min(p - r - 1, m)`` warm-up forwards, then ``m - w`` iterations
    ``F(w + i), B(i)``, each followed by ``W(i - r)`` once ``i >= r``: rank ``r``
    starts its W passes ``r`` iterations late, so every rank holds at most
    ``min(p, m)`` micro-batches (1F1B's first rank's peak). Cool-down: each remaining
    ``B`` followed by the oldest pending ``W``, then the pending ``W`` s. The late W
    passes fill the tail: with ``T_F = T_B = T_W`` the bubble is a third of 1F1B's,
    ``(p - 1) * (T_F + T_B - T_W)`` against ``(p - 1) * (T_F + T_B + T_W)`` (paper,
    sec. 3.1), when ``m >= p``.
    """
    p, m = _sizes(p, m)
    rows = []
    for r in range(p):
        warmup = min(p - r - 1, m)
        steps = [Step("F", i) for i in range(warmup)]
        pending = []  # micro-batches whose B ran and whose W has not
        for i in range(m - warmup):
            steps += [Step("F", warmup + i), Step("B", i)]
            pending.append(i)
            if i >= r:
                steps.append(Step("W", pending.pop(0)))
        for i in range(m - warmup, m):
            steps.append(Step("B", i))
            pending.append(i)
            steps.append(Step("W", pending.pop(0)))
        rows.append(steps + [Step("W", i) for i in pending])
    return _schedule("zb-h1", p, m, 1, rows)


SCHEDULE_NAMES = ("gpipe", "1f1b", "interleaved", "zb-h1")


def make_schedule(name, p, m, v=1):
    """The schedule called ``name`` (one of :data:`SCHEDULE_NAMES`) for ``p`` ranks and
    ``m`` micro-batches; ``v`` chunks per rank, for "interleaved" only (at least 2).
    Raises ValueError, naming the command-line option, for anything it cannot build."""
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown pipeline --schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    p, m = _sizes(p, m)
    if name == "interleaved":
        return interleaved(p, m, v)
    if index(v) != 1:
        raise ValueError(f"--virtual-stages {v} needs --schedule interleaved; {name} runs one chunk per rank")
    return {"gpipe": gpipe, "1f1b": one_f_one_b, "zb-h1": zb_h1}[name](p, m)
