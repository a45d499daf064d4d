"""What a pipeline-parallel run reports: the bubble measured on every rank beside the formula
and the simulator, the activations each stage held, the bytes that crossed between stages.

The bubble is measured as a rank's idle share of the pipeline's part of the step: 1 minus
(time inside its steps' computation) / (the pipeline's part of the step, as long as the
slowest rank of the job took for it) -- the "of the step" definition, one common length for
every rank as in the simulator, (p - 1) / (m + p - 1)
for GPipe and 1F1B with equal stages (``schedule_formulas``). Two predictions stand beside
it: the formula with unit costs (F = 1, B = 2, or B = W = 1 for ZB-H1), and the simulator
run with the F, B and W times this run measured, each stage its own (medians over its ranks
and steps): the first holds the embedding, the last the LM head and the loss, so stages are
of unequal work. What the measurement adds to the simulator: the messages' own time, the
steps' Python between computations, and -- with more ranks than cores -- time waiting for a
core.
"""
import numpy as np

from .schedule_formulas import predicted_bubble, predicted_bubble_of_ideal
from .schedule_sim import simulate


def _max():
    from mpi4py import MPI
    return MPI.MAX


def measured_costs(timelines, v):
    """Median F, B and W durations of a full stage (a chunk's times v) over ``timelines``."""
    cost = {}
    for kind in "FBW":
        times = [t["end"] - t["compute_start"] for tl in timelines for t in tl if t["kind"] == kind]
        if times:
            cost[kind] = float(np.median(times)) * v
    return cost


def rank_figures(mesh, steps, led):
    """This rank's figures over ``steps`` (the step records after the first, if there are
    more than one); ``led``: a ledger open over the last step (for the p2p bytes)."""
    later = steps[1:] if len(steps) > 1 else steps
    # each step's pipeline part as long as the slowest rank's (control data, one float a step)
    mine = np.array([s["pipeline_seconds"] for s in later], np.float64)
    longest = np.empty_like(mine)
    mesh.world.Allreduce(mine, longest, op=_max())
    bubble = [1 - s["compute_seconds"] / t for s, t in zip(later, longest)]
    p2p = [r for r in led.records if r["op"] in ("send", "recv")]
    return dict(rank=mesh.world.Get_rank(), dp=mesh.dp_rank, pp=mesh.pp_rank, tp=mesh.tp_rank,
                bubble_measured=float(np.median(bubble)),
                pipeline_seconds=float(np.median([s["pipeline_seconds"] for s in later])),
                wait_seconds=float(np.median([s["wait_seconds"] for s in later])),
                peak_in_flight=max(s["peak_in_flight"] for s in steps),
                peak_activation_bytes=max(s["peak_activation_bytes"] for s in steps),
                p2p_bytes_sent=int(sum(r["bytes_sent"] for r in p2p)),
                p2p_messages=sum(1 for r in p2p if r["op"] == "send"))


def pipeline_entry(mesh, schedule, steps, led):
    """The JSON ``pipeline`` entry on world rank 0 (None elsewhere); every rank calls it."""
    mine = rank_figures(mesh, steps, led)
    timelines = mesh.world.gather([s["timeline"] for s in steps[1:] or steps], root=0)
    ranks = mesh.world.gather(mine, root=0)
    if mesh.world.Get_rank() != 0:
        return None
    name, p, m, v = schedule.name, schedule.p, schedule.m, schedule.v
    cost = measured_costs([tl for rank in timelines for tl in rank], v)
    # each stage's own F, B, W (the first embeds, the last adds the head and the loss)
    per_stage = [measured_costs([tl for r, rank in zip(ranks, timelines) if r["pp"] == k for tl in rank], v)
                 for k in range(p)]
    simulated = simulate(schedule, [{k: round(c * 1e6) for k, c in stage.items()}  # integer µs
                                    for stage in per_stage])
    return dict(
        schedule=name, stages=schedule.n_stages, pp=p, micro_batches=m, virtual_stages=v,
        bubble_predicted=float(predicted_bubble(name, p, m, v)),
        bubble_predicted_of_ideal=float(predicted_bubble_of_ideal(name, p, m, v)),
        bubble_simulated_measured_costs=[float(b) for b in simulated.bubble],
        measured_costs_seconds=cost, measured_costs_seconds_per_stage=per_stage, ranks=ranks,
        bubble_measured=[r["bubble_measured"] for r in ranks],
        peak_activation_bytes=[r["peak_activation_bytes"] for r in ranks],
        p2p_bytes=sum(r["p2p_bytes_sent"] for r in ranks),
        # per world rank, the last step: kind, micro, chunk, start, compute_start, end (seconds)
        timeline_last_step=[rank[-1] for rank in timelines])


def describe(entry):
    """A few lines for people: the bubble per pipeline rank against its predictions."""
    lines = [f"pipeline: {entry['schedule']}, {entry['stages']} stages on {entry['pp']} ranks, "
             f"{entry['micro_batches']} micro-batches: bubble (idle share of the pipeline's part "
             f"of a step) predicted {entry['bubble_predicted']:.3f} by the formula "
             f"(= {entry['bubble_predicted_of_ideal']:.3f} of the ideal time)",
             "  pp rank  bubble measured  simulated with measured costs  peak activations  "
             "sent to neighbours"]
    seen = set()
    for r in entry["ranks"]:
        if r["dp"] or r["tp"] or r["pp"] in seen:  # one row per stage rank: replica 0, tp 0
            continue
        seen.add(r["pp"])
        sim = entry["bubble_simulated_measured_costs"][r["pp"]]
        lines.append(f"  {r['pp']:>7}  {r['bubble_measured']:>15.3f}  {sim:>29.3f}  "
                     f"{r['peak_activation_bytes'] / 2**20:>12.2f} MiB  "
                     f"{r['p2p_bytes_sent'] / 2**20:>12.2f} MiB")
    return "\n".join(lines)
