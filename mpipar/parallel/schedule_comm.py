"""What each step of a pipeline schedule waits for, and the messages it receives and sends.

The dependencies of a step on rank ``r``, chunk ``c``, model stage ``s = c * p + r``
(``S = p * v`` stages, micro-batch ``i``):

* ``F(s, i)`` needs ``F(s - 1, i)``: the activation from the previous model stage
  (none for ``s = 0``, which reads the micro-batch itself).
* ``B(s, i)`` needs ``F(s, i)`` on the same rank (what it saved) and ``B(s + 1, i)``:
  the gradient of the loss with respect to this stage's output. The last stage's
  ``B`` needs only its ``F`` (it computes the loss).
* ``W(s, i)`` needs ``B(s, i)`` on the same rank.

A dependency on another rank is a message: ``F`` sends its output activation to the
next stage's rank, ``B`` sends the input gradient to the previous stage's rank.
:func:`transfers` lists them per step so that an executor can post ``Irecv`` for a
step's receives before it runs it and ``Isend`` its sends after, from the same data
the simulator checks. Each message has a tag unique within the schedule, so that
messages between the same two ranks (the interleaved schedule sends several chunks'
activations from rank ``p - 1`` to rank 0) can never be confused.
"""
from typing import NamedTuple

from .schedules import Step, rank_and_chunk, stage_of

__all__ = ["Transfer", "dependencies", "messages", "transfers"]


class Transfer(NamedTuple):
    """One point-to-point message: ``src`` rank's ``src_step`` sends, ``dst`` rank's
    ``dst_step`` needs it. ``what``: "activation" (an F's output, the next stage's
    input) or "gradient" (a B's input gradient, the previous stage's output gradient).
    ``tag``: unique within the schedule (add a base tag to keep it clear of others)."""

    src: int
    src_step: Step
    dst: int
    dst_step: Step
    what: str
    tag: int


def _at(schedule, stage, kind, micro):
    """(rank, step) of ``kind`` for ``micro`` at model stage ``stage``."""
    rank, chunk = rank_and_chunk(schedule.p, stage)
    return rank, Step(kind, micro, chunk)


def dependencies(schedule, rank, step):
    """The (rank, step) pairs that must finish before ``step`` of rank ``rank`` can start,
    on this rank and on others (see the module docstring)."""
    s = stage_of(schedule.p, rank, step.chunk)
    if step.kind == "F":
        return [_at(schedule, s - 1, "F", step.micro)] if s > 0 else []
    if step.kind == "B":
        deps = [(rank, Step("F", step.micro, step.chunk))]
        if s < schedule.n_stages - 1:
            deps.append(_at(schedule, s + 1, "B", step.micro))
        return deps
    if step.kind == "W":
        return [(rank, Step("B", step.micro, step.chunk))]
    raise ValueError(f"rank {rank}: unknown step kind {step.kind!r} in {step}; kinds are F, B, W")


def _tag(schedule, stage, micro, what):
    """Unique per (receiving stage, micro-batch, direction)."""
    return 2 * (micro * schedule.n_stages + stage) + (what == "gradient")


def transfers(schedule, rank, step):
    """``(receives, sends)`` of ``step`` on rank ``rank``: lists of :class:`Transfer`.

    Only messages between different ranks: with ``p = 1`` every dependency is local.
    """
    s = stage_of(schedule.p, rank, step.chunk)
    receives, sends = [], []
    if step.kind == "F":
        prev_rank, prev = _at(schedule, s - 1, "F", step.micro)
        if s > 0 and prev_rank != rank:
            receives.append(Transfer(prev_rank, prev, rank, step, "activation",
                                     _tag(schedule, s, step.micro, "activation")))
        next_rank, nxt = _at(schedule, s + 1, "F", step.micro)
        if s < schedule.n_stages - 1 and next_rank != rank:
            sends.append(Transfer(rank, step, next_rank, nxt, "activation",
                                  _tag(schedule, s + 1, step.micro, "activation")))
    elif step.kind == "B":
        next_rank, nxt = _at(schedule, s + 1, "B", step.micro)
        if s < schedule.n_stages - 1 and next_rank != rank:
            receives.append(Transfer(next_rank, nxt, rank, step, "gradient",
                                     _tag(schedule, s, step.micro, "gradient")))
        prev_rank, prev = _at(schedule, s - 1, "B", step.micro)
        if s > 0 and prev_rank != rank:
            sends.append(Transfer(rank, step, prev_rank, prev, "gradient",
                                  _tag(schedule, s - 1, step.micro, "gradient")))
    elif step.kind != "W":
        raise ValueError(f"rank {rank}: unknown step kind {step.kind!r} in {step}; kinds are F, B, W")
    return receives, sends


def messages(schedule):
    """Every message of the schedule, in the order each sending rank sends them."""
    return [t for rank, steps in enumerate(schedule.steps) for step in steps
            for t in transfers(schedule, rank, step)[1]]
