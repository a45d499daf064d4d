"""The rows and the table of ``python -m mpipar.bench pp``: one per schedule and m.

A row joins what ``pipeline_report.pipeline_entry`` measured on every rank (the bubble, the
activations held, the bytes between stages, the F/B/W times and the simulator run with
them) with the step's medians and two closed forms: ``schedule_formulas.predicted_peak``
per rank, and the bytes a step must send,

    2 (S - 1) m b T d x itemsize     (S = p v model stages)

-- every micro-batch's activation (b, T, d) crosses each of the S - 1 cuts forward and
its gradient, of the same shape, backward (Huang et al. 2019, GPipe, sec. 2; Narayanan et
al. 2021, sec. 2.2: with v chunks per rank there are v times as many cuts, and as many
more messages). The last stage's loss and the tied embedding's gradient sum are not
point-to-point messages and are not counted.
"""
import numpy as np

from ..measure.units import format_bytes, format_seconds
from ..parallel.schedule_formulas import predicted_peak
from .table import Column, format_table
from .timing import medians


def p2p_bytes_predicted(stages, m, batch_per_micro, seq, config):
    """2 (S - 1) m b T d x itemsize: the module docstring's count."""
    itemsize = np.dtype(config.dtype).itemsize
    return 2 * (stages - 1) * m * batch_per_micro * seq * config.n_embd * itemsize


def row_of(entry, figures, batch_per_micro, seq, config):
    """One row of the JSON from rank 0's ``pipeline_entry`` and the step's ``figures``
    (per trial, each the slowest rank's)."""
    med = medians(figures)
    name, p, m, v = entry["schedule"], entry["pp"], entry["micro_batches"], entry["virtual_stages"]
    ranks = entry["ranks"]  # world order, which is pipeline order here (dp = tp = 1)
    measured, simulated = entry["bubble_measured"], entry["bubble_simulated_measured_costs"]
    return dict(
        schedule=name, virtual_stages=v, stages=entry["stages"], pp=p, micro_batches=m,
        batch_per_micro=batch_per_micro, global_batch=m * batch_per_micro, seq=seq,
        step_seconds=med["seconds"], pipeline_seconds=med["pipeline_seconds"],
        step_seconds_trials=figures["seconds"], pipeline_seconds_trials=figures["pipeline_seconds"],
        bubble_measured=measured, bubble_measured_mean=float(np.mean(measured)),
        bubble_measured_max=float(np.max(measured)),
        bubble_predicted=entry["bubble_predicted"],
        bubble_predicted_of_ideal=entry["bubble_predicted_of_ideal"],
        bubble_simulated=simulated, bubble_simulated_mean=float(np.mean(simulated)),
        measured_costs_seconds=entry["measured_costs_seconds"],
        measured_costs_seconds_per_stage=entry["measured_costs_seconds_per_stage"],
        peak_activation_bytes=entry["peak_activation_bytes"],
        peak_activation_bytes_max=int(max(entry["peak_activation_bytes"])),
        peak_in_flight=[r["peak_in_flight"] for r in ranks],
        peak_in_flight_predicted=[predicted_peak(name, p, m, v, r) for r in range(p)],
        wait_seconds=[r["wait_seconds"] for r in ranks],
        p2p_bytes=entry["p2p_bytes"], p2p_messages=sum(r["p2p_messages"] for r in ranks),
        p2p_bytes_predicted=p2p_bytes_predicted(entry["stages"], m, batch_per_micro, seq, config),
        ranks=ranks, timeline_last_step=entry["timeline_last_step"])


def _share(x):
    return f"{x:.3f}"


COLUMNS = [Column("schedule", align="<"), Column("m"), Column("overlap", align="<"),
           Column("step", format_seconds),
           Column("pipeline", format_seconds), Column("measured", _share), Column("max", _share),
           Column("formula", _share), Column("of ideal", _share), Column("simulated", _share),
           Column("peak held", format_bytes), Column("rank 0 held"), Column("p2p", format_bytes)]


def table_row(row):
    """The cells of one row: the medians, the bubbles, memory and bytes."""
    name = row["schedule"] + (f" v={row['virtual_stages']}" if row["virtual_stages"] > 1 else "")
    held = f"{row['peak_in_flight'][0]} ({row['peak_in_flight_predicted'][0]})"
    return [name, row["micro_batches"], row["overlap"], row["step_seconds"], row["pipeline_seconds"],
            row["bubble_measured_mean"], row["bubble_measured_max"], row["bubble_predicted"],
            row["bubble_predicted_of_ideal"], row["bubble_simulated_mean"],
            row["peak_activation_bytes_max"], held, row["p2p_bytes"]]


def print_table(rows, p, config, batch_per_micro, trials):
    """The table on stdout (rank 0), a legend under it."""
    title = (f"pipeline on {p} rank(s): GPT-2 d={config.n_embd}, {config.n_layer} layers, "
             f"micro-batches of {batch_per_micro} x {config.n_ctx} tokens, medians of {trials} step(s)")
    print(format_table(COLUMNS, [table_row(r) for r in rows], title=title, rule="-"))
    print("  overlap: what moved the messages while stages computed (poll, thread, none)\n"
          "  step, pipeline: the slowest rank's step and its pipeline part (forwards and backwards)\n"
          "  measured, max: bubble = 1 - compute / pipeline time, mean and max over ranks\n"
          "  formula: (p-1)/(m+p-1) (gpipe, 1f1b), (p-1)/(vm+p-1) (interleaved), (p-1)/(3m+p-1) "
          "(zb-h1, m >= p); of ideal: the same idle time / (m t)\n"
          "  simulated: schedule_sim with this run's F, B, W times of each stage, mean over ranks\n"
          "  peak held: activations kept for backward, max over ranks; rank 0 held: micro-batches "
          "(chunks) in flight (predicted)\n"
          "  p2p: bytes sent between stages per step, all ranks", flush=True)


def _label(row):
    return row["schedule"] + (f" v={row['virtual_stages']}" if row["virtual_stages"] > 1 else "")


def comparison(rows, modes):
    """The modes side by side, one entry per (schedule, m): each mode's step and pipeline
    medians, the main thread's wait per stage (median over trials, per rank: its time blocked
    on receives), and ``speedup``: the first mode's step over each mode's."""
    cases = {}
    for r in rows:
        cases.setdefault((r["schedule"], r["virtual_stages"], r["micro_batches"]), {})[r["overlap"]] = r
    out = []
    for (name, v, m), by_mode in cases.items():
        base = by_mode[modes[0]]["step_seconds"]
        out.append(dict(schedule=name, virtual_stages=v, micro_batches=m, modes={
            mode: dict(step_seconds=r["step_seconds"], pipeline_seconds=r["pipeline_seconds"],
                       wait_seconds=r["wait_seconds"], bubble_measured_mean=r["bubble_measured_mean"],
                       speedup=base / r["step_seconds"])
            for mode, r in by_mode.items()}))
    return out


def _waits(seconds):
    return " ".join(format_seconds(s) for s in seconds)


def print_comparison(compared, modes, p, trials):
    """The side-by-side table on stdout (rank 0)."""
    columns = [Column("schedule", align="<"), Column("m")]
    columns += [Column(f"step {mode}", format_seconds) for mode in modes]
    columns += [Column(f"{modes[0]}/{mode}", lambda x: f"{x:.2f}x") for mode in modes[1:]]
    columns += [Column(f"wait per stage, {mode}", align="<") for mode in modes]
    rows = []
    for c in compared:
        by = c["modes"]
        rows.append([_label(c), c["micro_batches"]] + [by[m]["step_seconds"] for m in modes]
                    + [by[m]["speedup"] for m in modes[1:]]
                    + [_waits(by[m]["wait_seconds"]) for m in modes])
    print(format_table(columns, rows, title=f"overlap modes side by side on {p} rank(s), "
                       f"alternating trials, medians of {trials}", rule="-"))
    print(f"  {modes[0]}/mode: the step in {modes[0]} over the step in that mode (> 1: faster)\n"
          "  wait per stage: each pipeline rank's main thread blocked on receives per step, "
          "rank 0 first", flush=True)
