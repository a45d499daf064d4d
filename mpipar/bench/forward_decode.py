"""``bench forward --decode N``: the time per generated token with the KV cache, beside its GEMV floor.

One trial: a fresh KV cache, the prompt (B, T) prefilled (not timed), then N greedy steps,
each one position through the model and the distributed argmax (``LanguageModel.generate``'s
loop, unrolled here to time the steps alone). Per token = the steps' time / N.

Every step multiplies each weight matrix by B vectors (a GEMV for B = 1): it reads all of
the rank's weights once and does 2 flops per weight read, so its time is bound by how fast
memory delivers the weights. The floor is those same products alone (``floor.Replay`` of
the N steps' products, the real weight arrays), and the bandwidth they reach is
``bytes of their operands / floor seconds``; per token above the floor is Python per layer,
the small non-matrix operations and the all-reduces (2 per block, one-row messages: their
latency, not their bytes) and the argmax's gather.
"""
from contextlib import nullcontext
import time

import numpy as np

from ..measure.ledger import CommLedger
from ..measure.op_profile import OpProfile, model_arrays
from . import forward_report
from .floor import Replay
from .timing import medians, run_trials


def greedy_steps(model, prompt, steps, profile=None):
    """Prefill ``prompt``, then ``steps`` greedy tokens; {"seconds": per token (steps only),
    "comm_seconds": communication per token}. ``profile``: an OpProfile open during the steps."""
    B, T = prompt.shape
    cache = model.new_cache(B, T + steps)
    token = model.argmax_last(model.decode(prompt, cache, 0))[:, None]
    with CommLedger() as led, profile or nullcontext():
        t0 = time.perf_counter()
        for i in range(steps):
            token = model.argmax_last(model.decode(token, cache, T + i))[:, None]
        seconds = time.perf_counter() - t0
    comm = sum(r["seconds"] for r in led.records)
    return {"seconds": seconds / steps, "comm_seconds": comm / steps}


def measure_decode(comm, model, prompt, steps, trials, warmup, profile=False):
    """Per-token decode time and its GEMV floor, alternating trial by trial; the bandwidth;
    with ``profile`` each trial's per-token profile table of this rank."""
    recording = OpProfile(persistent=model_arrays(model))  # the steps' products, not the prefill's
    greedy_steps(model, prompt, steps, recording)
    replay = Replay(recording.products)
    del recording

    def floor():
        t0 = time.perf_counter()
        replay()
        return {"seconds": (time.perf_counter() - t0) / steps}

    figures = run_trials(comm, {"decode": lambda: greedy_steps(model, prompt, steps), "floor": floor},
                         trials, warmup, figures=lambda figs: figs)
    per_token, per_floor = medians(figures["decode"]), medians(figures["floor"])
    nbytes = replay.nbytes / steps  # this rank's operand bytes per token
    out = {"steps": steps, "prompt": list(prompt.shape), "seconds_per_token": per_token["seconds"],
           "seconds_per_token_all": figures["decode"]["seconds"],
           "comm_seconds_per_token": per_token["comm_seconds"],
           "gemv_floor_seconds_per_token": per_floor["seconds"],
           "gemv_floor_seconds_all": figures["floor"]["seconds"],
           "ratio_to_floor": per_token["seconds"] / per_floor["seconds"],
           "gemv_bytes_per_token_per_rank": int(nbytes),
           "gemv_products_per_token": len(replay.pairs) // steps,
           # every rank's bytes over the slowest rank's floor: the bandwidth the ranks reach together
           "gemv_bandwidth_bytes_per_s": float(np.sum(comm.allgather(nbytes)) / per_floor["seconds"]),
           "decode_bandwidth_bytes_per_s": float(np.sum(comm.allgather(nbytes)) / per_token["seconds"])}
    if profile:
        out["profile_per_rank"] = comm.allgather(profile_steps(model, prompt, steps, trials))
        out["balance"] = forward_report.balance(out["profile_per_rank"], comm.allgather(nbytes))
    return out


def profile_steps(model, prompt, steps, trials):
    """This rank's per-token profile table (seconds per kind) of the median of ``trials``
    profiled decode runs (the median by total time: its kinds add up to its total)."""
    tables = []
    for _ in range(trials):
        prof = OpProfile()
        figs = greedy_steps(model, prompt, steps, prof)
        total = figs["seconds"] * steps
        table = prof.table(total, figs["comm_seconds"] * steps)
        tables.append({"total": figs["seconds"], **{k: v / steps for k, v in table.items()},
                       "calls": {k: n // steps for k, n in prof.calls.items()}})
    return sorted(tables, key=lambda t: t["total"])[len(tables) // 2]
