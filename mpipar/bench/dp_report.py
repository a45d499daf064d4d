"""What bench dp prints: one row per mode, then how the buckets of each overlapping mode
travelled relative to the end of backward."""
from ..measure.units import format_bytes, format_seconds
from .table import Column, format_table

NAMES = {"none": "after backward", "poll": "polled in backward", "thread": "communication thread"}
EACH = {"none": "each after its bwd", "poll": "each polled in the next",
        "thread": "each on the thread"}


def row_name(key, variant):
    """The table's words for a row of bench dp (``variant``: its DataParallel options)."""
    mode, m = variant["overlap"], variant.get("micro_batches", 1)
    n = variant["in_flight"]
    flight = "" if mode != "thread" or n == 1 else f", {'all' if n is None else n} at once"
    if m == 1:
        return NAMES[mode] + flight
    if variant["sync"] == "last":
        return f"M={m}: summed, then no_sync ({mode}{flight})"
    return f"M={m}: {EACH[mode]}{flight}"


def bucket_summary(timelines):
    """Per rank (``timelines``: one ``relative_to_backward`` dict per rank): how many buckets
    finished before backward ended, of how many, and when the last one ended (seconds after
    backward; negative: before it)."""
    per_rank = [dict(finished_during_backward=sum(e["end"] < 0 for e in t["buckets"]),
                     buckets=len(t["buckets"]),
                     last_end=max((e["end"] for e in t["buckets"]), default=None))
                for t in timelines]
    return dict(per_rank=per_rank,
                fewest=min((r["finished_during_backward"] for r in per_rank), default=0),
                most=max((r["finished_during_backward"] for r in per_rank), default=0),
                last_end=max((r["last_end"] for r in per_rank if r["last_end"] is not None),
                             default=None))


def print_report(result):
    r = result
    library = "MPICH async progress on" if r["mpich_async_progress"] else "no async progress"
    print(f"{r['preset']}: {r['world_size']} rank(s), global batch {r['batch']} x {r['seq']} tokens, "
          f"{format_bytes(r['grad_bytes'])} of gradients in {r['buckets']} bucket(s) of "
          f"{format_bytes(r['bucket_bytes'])}; {r['mpi_library']}, MPI_THREAD_{r['thread_level'].upper()}, "
          f"{library}")
    med = r["modes"]
    base = med.get("none")
    columns = [Column("all-reduce", align="<"), Column("step", format_seconds),
               Column("fwd + bwd", format_seconds), Column("wait (slowest rank)", format_seconds),
               Column("wait after last bwd", format_seconds), Column("step vs none", align=">"),
               Column("waits vs none", align=">")]
    rows = []
    for mode, m in med.items():
        vs_step = vs_wait = "-"
        if base and mode != "none":
            vs_step = f"{100 * (m['seconds'] / base['seconds'] - 1):+.1f}%"
            vs_wait = " / ".join(f"{100 * m[k] / base[k]:.0f}%" if base[k] > 0 else "-"
                                 for k in ("sync_wait_seconds", "wait_after_last_backward"))
        rows.append([row_name(mode, r["variants"][mode]), m["seconds"], m["backward_seconds"],
                     m["sync_wait_seconds"], m["wait_after_last_backward"], vs_step, vs_wait])
    print(format_table(columns, rows, indent="  "))
    print(f"  (medians of {r['steps']} steps; the slowest rank's figures in each; the wait after "
          "the last rank's backward leaves out waiting for that rank"
          + ("; micro-batch rows: fwd + bwd of all M, their timelines the last micro-batch's"
             if r["micro_batches"] > 1 else "") + ")")
    for mode, s in r["buckets_during_backward"].items():
        if not s["per_rank"] or not s["per_rank"][0]["buckets"]:
            continue
        last = s["last_end"]
        when = ("before backward ended" if last is not None and last < 0 else
                f"{format_seconds(last)} after backward" if last is not None else "never")
        print(f"  {row_name(mode, r['variants'][mode])}: {s['fewest']}-{s['most']} of "
              f"{s['per_rank'][0]['buckets']} buckets "
              f"finished during backward (fewest-most over the ranks); the last ended {when}",
              flush=True)
