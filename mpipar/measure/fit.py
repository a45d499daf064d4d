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

:func:`cost_model` builds the whole CostModel from a calibration's timings, with a second
set of per-byte constants past a break in the per-byte cost (:func:`find_break`).

A fit per trial (:func:`fits_per_trial`) shows the spread of the constants over
repeats; the model uses the fit of the per-size medians (:func:`fit_model`).
"""
from dataclasses import replace

import numpy as np

from .cost_model import CostModel

GAMMA_FROM = 1 << 14  #: gamma and kappa are fitted on sizes from this up
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


def slope_through(sizes, seconds, alpha):
    """beta of the line t = alpha + n*beta with alpha given: the weighted (1/t) least-squares
    slope, floored -- the bandwidth of large messages, whose latency the small ones measure."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    w = 1 / t ** 2
    return max(float(np.sum(w * n * (t - alpha)) / np.sum(w * n * n)), FLOOR_BETA)


def _relative_error(sizes, seconds, alpha, beta):
    t = np.asarray(seconds, float)
    return float(np.sum(((alpha + np.asarray(sizes, float) * beta - t) / t) ** 2))


def find_break(sizes, seconds, least=2, gain=2.0, close=0.05):
    """Where the per-byte cost changes (the caches): the index k such that a line through
    sizes[:k] and a slope of its own, same intercept, through sizes[k:] fit the times
    best (weighted squared relative error), each side holding at least ``least`` sizes.

    None where one line through all the sizes is within ``close`` (root mean square of the
    relative errors), where no split makes the error ``gain`` times smaller than that line's,
    or where there are too few sizes: the caches then do not show."""
    if len(sizes) < 2 * least:
        return None
    alpha, beta = fit_line(sizes, seconds)
    one = _relative_error(sizes, seconds, alpha, beta)
    if one <= len(sizes) * close ** 2:
        return None
    best, best_err = None, one / gain
    for k in range(least, len(sizes) - least + 1):
        a, b = fit_line(sizes[:k], seconds[:k])
        a = max(a, FLOOR_ALPHA)
        b_large = slope_through(sizes[k:], seconds[k:], a)
        err = (_relative_error(sizes[:k], seconds[:k], a, b)
               + _relative_error(sizes[k:], seconds[k:], a, b_large))
        if err < best_err:
            best, best_err = k, err
    return best


def cost_model(sizes, raw, step, add, copy, alone, source):
    """The CostModel of a calibration's timings (per trial k, size i: ``raw`` exchanges, ``step``
    Channel steps or None, ``add`` and ``copy`` local times, ``alone`` ping-pongs or None):
    one set of constants, or where the per-byte cost changes (:func:`find_break`: the caches)
    a second set fitted on the sizes from there, ``large``. gamma and kappa are slopes through
    the sizes >= GAMMA_FROM (smaller adds and copies are call overhead)."""
    def cut(rows, part):
        return None if rows is None else [r[part] for r in rows]

    def median(rows):
        return None if rows is None else np.median(np.asarray(rows, float), axis=0)

    raw_med, add_med, copy_med, alone_med = (median(t) for t in (raw, add, copy, alone))
    local = [i for i, n in enumerate(sizes) if n >= GAMMA_FROM]

    def slope(med, part):  # gamma, kappa: through part's sizes >= GAMMA_FROM (else all such, else all)
        idx = [i for i in range(len(sizes))[part] if sizes[i] >= GAMMA_FROM]
        idx = next(c for c in (idx, local, list(range(len(sizes)))) if len(c) >= 2)
        return max(fit_line([sizes[i] for i in idx], med[idx])[1], FLOOR_BETA)

    k = find_break(sizes, raw_med)
    small = slice(0, k)
    consts = fit_model(sizes[small], cut(raw, small), cut(step, small))
    alone_fit = None if alone is None else fit_model(sizes[small], cut(alone, small))
    model = CostModel(consts["alpha"], consts["beta"], slope(add_med, small), o=consts["o"],
                      kappa=slope(copy_med, small), source=source,
                      beta_alone=None if alone_fit is None else alone_fit["beta"])
    if k is None:
        return model
    big = slice(k, None)
    large = replace(model, beta=slope_through(sizes[big], raw_med[big], model.alpha),
                    gamma=slope(add_med, big), kappa=slope(copy_med, big),
                    source=f"{source}, sizes from {sizes[k]} B",
                    beta_alone=None if alone is None else
                    slope_through(sizes[big], alone_med[big], alone_fit["alpha"]))
    return replace(model, large=large, large_from=sizes[k], small_up_to=sizes[k - 1])
