"""Fitting the cost model's constants to timings: pure functions, no MPI.

Two kinds of timing go in, both per message size n and per trial k:

* ``raw[k][i]``: one bare ``MPI_Sendrecv`` of ``sizes[i]`` bytes, every rank at once
  (or a ping-pong's one-way time): the Hockney line t(n) = alpha + n*beta
  (Hockney 1994).
* ``step[k][i]``: one step of a hand-written algorithm on a ``Channel`` -- the same
  Sendrecv plus the Python around it (the tally, slicing, the combine of the block
  that arrived) -- at the same sizes, in trials alternating with the raw ones.

The line is a weighted least-squares fit with weights 1/t, so that every size
counts by its *relative* error and a 4 MiB message does not drown an 8-byte one:
minimise sum_i ((alpha + n_i beta - t_i) / t_i)^2.

The per-step software overhead ``o`` is LogGP's o (Alexandrov, Ionkov, Schauser &
Scheiman, "LogGP: incorporating long messages into the LogP model", SPAA 1995):
time a processor is busy with a message that the wire does not see. Here it is
the intercept of the step's line minus the intercept of the raw line, the
Python cost of one step that a C library does not pay. The step's slope minus
the raw slope is what the step adds per byte (its combine: about gamma).

A fit per trial (:func:`fits_per_trial`) shows the spread of the constants over
repeats; the model uses the fit of the per-size medians (:func:`fit_model`).
"""
import numpy as np

FLOOR_ALPHA, FLOOR_BETA = 1e-9, 1e-13  #: smallest constants a fit returns (noise can go below 0)


def fit_line(sizes, seconds):
    """(alpha, beta) of the weighted least-squares line t = alpha + n*beta through the
    points (sizes[i], seconds[i]), weights 1/seconds[i]. Needs two distinct sizes."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    if n.shape != t.shape or len(set(n.tolist())) < 2 or not np.all(t > 0):
        raise ValueError("fit_line needs positive times at two or more distinct sizes")
    design = np.stack([np.ones_like(n), n], 1) / t[:, None]
    alpha, beta = np.linalg.lstsq(design, np.ones_like(t), rcond=None)[0]
    return float(alpha), float(beta)


def fit_overhead(sizes, raw, step):
    """(o, extra per byte): the step's line minus the raw line, intercept and slope."""
    a_raw, b_raw = fit_line(sizes, raw)
    a_step, b_step = fit_line(sizes, step)
    return a_step - a_raw, b_step - b_raw


def fit_model(sizes, raw, step=None):
    """{alpha, beta, o}: the lines through the per-size medians of ``raw[k][i]`` (and of
    ``step[k][i]``; o = 0 without it), floored to small positive numbers."""
    raw_med = np.median(np.asarray(raw, float), axis=0)
    alpha, beta = fit_line(sizes, raw_med)
    o = 0.0
    if step is not None:
        o = fit_overhead(sizes, raw_med, np.median(np.asarray(step, float), axis=0))[0]
    return {"alpha": max(alpha, FLOOR_ALPHA), "beta": max(beta, FLOOR_BETA), "o": max(o, 0.0)}


def fits_per_trial(sizes, raw, step=None):
    """One :func:`fit_model` per trial k (row k of raw and step): the constants' spread."""
    return [fit_model(sizes, [r], None if step is None else [s])
            for r, s in zip(raw, step if step is not None else [None] * len(raw))]


def spread(fits):
    """{constant: (median, min, max)} over a list of fits."""
    return {key: (float(np.median([f[key] for f in fits])), float(min(f[key] for f in fits)),
                  float(max(f[key] for f in fits))) for key in fits[0]}
