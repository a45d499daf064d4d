"""CommLedger: what every collective and message cost on this rank, next to what the model predicted.

    with CommLedger() as led:
        y = allreduce(comm, x, algorithm="ring")
    print0(comm, led.summary())
    led.to_dict()["records"][0]["bytes_sent"]

Ledgers nest: a call is recorded in every ledger open on the rank. Each ledger
predicts with the :class:`CostModel` you pass (e.g. ``CostModel.calibrate(comm)``), or else,
per world size, with the constants ``bench tune`` calibrated and saved in that size's
decision table (mpipar.collectives.tuning), or else the defaults. Recording costs one clock
read around the call and one dict per call, cheap enough to leave on. Every record is built by
``record_call`` (the blocking collectives, the 16-bit wires, the non-blocking
ring, the point-to-point messages of ``mpipar.parallel.p2p``), so every record has
the same keys.

Point-to-point records have op ``"send"`` or ``"recv"``: a send's bytes are its
bytes_sent, a receive's are its ``bytes_received`` (its bytes_sent is 0), so the
"sent" column counts every byte once, on the rank that sent it. Their seconds are
the time spent posting and waiting, not the time in flight (see ``p2p``); the
summary lists them per peer ("p2p to rank 1", "p2p from rank 0").

Threads: a record is one ``list.append`` per open ledger, atomic under Python's GIL, so a
communication thread may record while the main thread computes; each record goes to the
ledgers open at that moment. Recording on the thread that posted a message (as
``pipeline_engine`` does) also keeps the records' order that thread's.
"""
import contextlib
import time

from .cost_model import MESSAGE_OPS, CostModel
from .units import format_bytes

__all__ = ["CommLedger", "CostModel"]

_OPEN = []  # the ledgers open on this rank, innermost last
_DTYPE_NAMES = {}  # dtype -> str(dtype), which is slow enough to show in the ledger's own cost


def recording():
    """True while at least one ledger is open (collectives skip the clock otherwise)."""
    return bool(_OPEN)


@contextlib.contextmanager
def paused():
    """No ledger records inside this block (a calibration's own calls are not the program's)."""
    opened = _OPEN[:]
    _OPEN.clear()
    try:
        yield
    finally:
        _OPEN[:0] = opened


def tracing():
    """True if an open ledger asked for per-message traces."""
    return any(led.trace for led in _OPEN)


def record(entry):
    """Add one collective call's entry to every open ledger (each gets its own copy)."""
    opened = tuple(_OPEN)  # one snapshot: a ledger closed meanwhile by another thread is fine
    if not opened:
        return
    for led in opened[:-1]:
        led._add(dict(entry))
    opened[-1]._add(entry)


def record_call(ch, op, algorithm, dtype, count, nbytes, seconds, *, requested=None,
                library=False, **extra):
    """Record one collective call (or one point-to-point message) that ran on Channel
    ``ch`` in every open ledger.

    ``dtype``, ``count``: the caller's array; ``nbytes``: the payload the cost model
    prices (allgather: the whole gathered result). The traffic -- bytes_sent,
    messages, steps, trace -- is the channel's, or None for ``library=True`` (the
    MPI library's own collective does not tell what it sent). ``requested``: what the
    caller asked for (``"auto"``), the algorithm itself if not given. ``extra`` keys
    (``comm_dtype``, ``nonblocking``; for a message ``peer``, ``tag``,
    ``bytes_received``, ``in_flight_seconds``) are added to the record as they are.
    """
    if not _OPEN:
        return
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    record(dict(
        op=op, algorithm=algorithm, requested=algorithm if requested is None else requested,
        dtype=name, count=int(count), nbytes=int(nbytes), world_size=ch.size, rank=ch.rank,
        bytes_sent=None if library else ch.bytes_sent, messages=None if library else ch.messages,
        steps=None if library else ch.steps, seconds=seconds, trace=ch.trace, **extra))


class CommLedger:
    """Records every collective this rank calls while the ledger is open."""

    def __init__(self, cost_model=None, trace=False):
        #: the model every record is predicted with; None: per world size, the constants
        #: saved with that size's decision table (``bench tune``), else the defaults
        self.cost_model = cost_model
        self._default = CostModel()
        self.trace = trace  #: keep (step, source, dest, nbytes) for every message
        self._records = []
        self._predicted = 0  # records before this index carry their predictions
        self.wall_seconds = 0.0
        self._t0 = None

    def __enter__(self):
        _OPEN.append(self)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall_seconds += time.perf_counter() - self._t0
        _OPEN.remove(self)
        return False

    def _add(self, entry):
        if not self.trace:
            entry.pop("trace", None)
        self._records.append(entry)

    @property
    def records(self):
        """One dict per call, oldest first, with the model's prediction added.

        Predictions are computed when the records are read, not while the
        collectives run, to keep recording cheap.
        """
        for entry in self._records[self._predicted:]:
            op, alg, p = entry["op"], entry["algorithm"], entry["world_size"]
            n = entry.get("wire_nbytes", entry["nbytes"])  # 16-bit wires move fewer bytes
            model = self.model_for(p)
            try:
                entry["predicted_seconds"] = model.predict(op, alg, p, n)
                entry["lower_bound_seconds"] = model.lower_bound(op, p, n)
            except (ValueError, KeyError):  # an operation the model has no formula for
                entry["predicted_seconds"] = entry["lower_bound_seconds"] = None
        self._predicted = len(self._records)
        return self._records

    def model_for(self, p):
        """The cost model that predicts a call on p ranks."""
        if self.cost_model is not None:
            return self.cost_model
        from ..collectives import tuning  # not at the top: the collectives import this module
        return tuning.model_for(p) or self._default

    def models_used(self):
        """{source: CostModel} of the models the records are predicted with."""
        sizes = {r["world_size"] for r in self.records} or {1}
        return {m.source: m for m in map(self.model_for, sorted(sizes))}

    def clear(self):
        self._records.clear()
        self._predicted = 0

    def to_dict(self):
        """JSON-ready: the records, the model they were predicted with, the open time."""
        models = list(self.models_used().values())
        return {"records": list(self.records),
                "cost_model": models[0].to_dict() if len(models) == 1 else [m.to_dict() for m in models],
                "wall_seconds": self.wall_seconds}

    def totals(self):
        """Per (op, algorithm): calls, nbytes, bytes_sent, messages, seconds, predicted,
        and bytes_received (None for collectives, which count only what they send).

        Messages are grouped per peer: (``"send"``, ``"p2p to rank 1"``)."""
        groups = {}
        for r in self.records:
            # a non-blocking call's seconds include the work done while it was in flight
            alg = r["algorithm"] + (" (non-blocking)" if r.get("nonblocking") else "")
            if r.get("comm_dtype", "float32") != "float32":  # e.g. "ring bfloat16/per_hop"
                alg += f" {r['comm_dtype']}/{r['rounding']}"
            if r["op"] in MESSAGE_OPS and "peer" in r:
                alg += f" {'to' if r['op'] == 'send' else 'from'} rank {r['peer']}"
            g = groups.setdefault((r["op"], alg), dict(
                calls=0, nbytes=0, bytes_sent=0, messages=0, seconds=0.0, predicted_seconds=0.0,
                bytes_received=0))
            g["calls"] += 1
            for key in ("nbytes", "bytes_sent", "messages", "seconds", "predicted_seconds",
                        "bytes_received"):
                if r.get(key) is None or g[key] is None:
                    g[key] = None  # the MPI library does not tell what its own calls sent
                else:
                    g[key] += r[key]
        return groups

    def summary(self):
        """A table grouped by op and algorithm, with totals and each group's share of time."""
        groups = self.totals()
        comm_s = sum(g["seconds"] for g in groups.values())
        wall = self.wall_seconds or (time.perf_counter() - self._t0 if self._t0 else 0.0)
        head = (f"{'op':<15}{'algorithm':<36}{'calls':>6}{'payload':>11}{'sent':>11}"
                f"{'msgs':>7}{'seconds':>11}{'predicted':>11}{'pred/meas':>10}{'% comm':>8}")
        lines = [head, "-" * len(head)]
        total = dict(calls=0, nbytes=0, bytes_sent=0, messages=0, seconds=0.0, predicted_seconds=0.0)
        for (op, alg), g in sorted(groups.items()):
            lines.append(_row(op, alg, g, comm_s))
            for key in total:
                total[key] += g[key] or 0
        lines.append("-" * len(head))
        lines.append(_row("total", "", total, comm_s))
        if any(op in MESSAGE_OPS for op, _ in groups):
            lines.append("send/recv: payload is the message, counted as sent by the sender only;\n"
                         "  their seconds are the time spent posting and waiting, not in flight")
        if wall > 0:
            lines.append(f"communication took {comm_s:.4g} s of the {wall:.4g} s the ledger was "
                         f"open ({100 * comm_s / wall:.1f}%); predictions: "
                         f"{', '.join(self.models_used())} model")
        return "\n".join(lines)


def _row(op, alg, g, comm_s):
    share = 100 * g["seconds"] / comm_s if comm_s else 0.0
    sent = "-" if g["bytes_sent"] is None else format_bytes(g["bytes_sent"])
    msgs = "-" if g["messages"] is None else g["messages"]
    pred = "-" if g["predicted_seconds"] is None else f"{g['predicted_seconds']:.3g}"
    error = ("-" if g["predicted_seconds"] is None or not g["seconds"]
             else f"{g['predicted_seconds'] / g['seconds']:.2f}")  # the model's error
    return (f"{op:<15}{alg:<36}{g['calls']:>6}{format_bytes(g['nbytes']):>11}"
            f"{sent:>11}{msgs:>7}{g['seconds']:>11.3g}{pred:>11}{error:>10}{share:>7.1f}%")
