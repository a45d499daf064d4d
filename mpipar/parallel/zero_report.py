"""Memory per rank and bytes per step of a data-parallel or ZeRO trainer: predicted, counted
by the trainer, and as the operating system sees it (peak RSS), for train's report and
bench memory.

Predicted memory is ``zero_layout.predicted_memory`` (16 Psi for DP, the stages' sharded
terms); "held" is the trainer's own count of the arrays it keeps (for DP: the parameters,
backward's gradients plus the buckets' flat copy, AdamW's m and v); the peak RSS adds the
interpreter, MPI, activations and every temporary (``measure.memory``). Bytes per step
are the ledger's bytes_sent of one step, by collective, beside the exact prediction
(ZeRO) and the paper's volume (2 Psi (p-1)/p numbers per rank, 3 Psi for stage 3).
"""
from ..measure.memory import peak_rss_bytes
from ..measure.units import format_bytes
from .zero import Zero
from .zero_layout import paper_step_bytes, predicted_memory


def trainer_memory(trainer):
    """{"held": ..., "predicted": ...} bytes of this rank (see the module docstring)."""
    if isinstance(trainer, Zero):
        return trainer.memory()
    model, item = trainer.model, trainer.model.dtype.itemsize
    params = model.param_bytes()
    buckets = sum(b.nbytes for b in trainer.buckets.buffers) if trainer.buckets else 0
    held = dict(params=params, grads=params + buckets, optimizer=trainer.optimizer.state_bytes(),
                gathered_peak=0)
    held["total"] = held["params"] + held["grads"] + held["optimizer"]
    psi = params // item
    return dict(held=held, predicted=predicted_memory(0, psi, psi, item))


def sent_by_op(ledger):
    """{op: bytes this rank sent} over the ledger's records (the library's own count as 0)."""
    out = {}
    for r in ledger.to_dict()["records"]:
        out[r["op"]] = out.get(r["op"], 0) + (r["bytes_sent"] or 0)
    return out


def memory_entry(trainer, comm, ledger):
    """Every rank's memory and the bytes of the step ``ledger`` recorded, gathered over
    ``comm`` (every rank of the job) onto every rank (control data)."""
    stage = trainer.stage if isinstance(trainer, Zero) else 0
    mine = trainer_memory(trainer)
    psi = trainer.layout.numel if stage else mine["predicted"]["params"] // trainer.model.dtype.itemsize
    mine.update(peak_rss=peak_rss_bytes(), sent=sent_by_op(ledger),
                sent_predicted=trainer.predicted_bytes() if stage else None)
    p = trainer.comm.Get_size()
    return dict(zero=stage, dp=p, params=int(psi), paper_bytes_per_rank=paper_step_bytes(
        stage, psi, p, trainer.model.dtype.itemsize), ranks=comm.allgather(mine))


def describe_memory(entry):
    """A few lines: the largest rank's memory, predicted beside held, and its bytes per step."""
    name = f"ZeRO-{entry['zero']}" if entry["zero"] else "DP"
    ranks = entry["ranks"]
    worst = max(ranks, key=lambda r: r["held"]["total"])
    pred, held = worst["predicted"], worst["held"]
    lines = [f"{name} over {entry['dp']} rank(s), {entry['params']} parameters: memory per rank "
             f"(largest), predicted / held by the trainer"]
    for key in ("params", "grads", "optimizer"):
        lines.append(f"  {key:<10} {format_bytes(pred[key]):>10} / {format_bytes(held[key]):>10}")
    if held.get("gathered_peak"):
        lines.append(f"  {'gathered':<10} {'':>10} / {format_bytes(held['gathered_peak']):>10}"
                     " (stage 3's layers, at most)")
    lines.append(f"  {'total':<10} {format_bytes(pred['total']):>10} / {format_bytes(held['total']):>10};"
                 f" peak RSS {format_bytes(max(r['peak_rss'] for r in ranks))}")
    sent = max(sum(r["sent"].values()) for r in ranks)
    lines.append(f"  bytes sent per step (largest rank): {format_bytes(sent)}; the paper's volume "
                 f"{format_bytes(entry['paper_bytes_per_rank'])}")
    return "\n".join(lines)
