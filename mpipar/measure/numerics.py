"""Comparing a parallel result with the serial one: bitwise, in ULPs, and against a bound.

Vocabulary (ARCHITECTURE.md, "Numerics"; every report and lesson uses these words):
    bitwise equal   the raw bits are the same, and none of them is a NaN
    max ULP         the largest distance in units in the last place (inf where either is NaN)
    normalised error  max |computed - reference| / (u * sum|terms|), u the unit roundoff

Near cancellation (sum|terms| much larger than |sum|) the ULP distance can be
huge while the error is as small as any summation order allows; the normalised
error stays meaningful there. Any order of summing p terms gives a normalised
error of at most p-1 (Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed. 2002, eq. 4.4, to first order in u).
"""
import hashlib

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def unit_roundoff(dtype):
    """u = 2^-(t) for a t-bit significand: 2^-11 float16, 2^-8 bfloat16, 2^-24 float32, 2^-53 float64."""
    dtype = np.dtype(dtype)
    if dtype == BFLOAT16:
        return 2.0 ** -8
    if dtype.kind != "f":
        return 0.0
    return float(np.finfo(dtype).eps) / 2


def _has_nan(x):
    return (x.dtype.kind == "f" or x.dtype == BFLOAT16) and bool(np.isnan(x.astype(np.float64)).any())


def bitwise_equal(a, b):
    """Same shape, dtype and bits, and no NaN: a NaN is never a match, not even of itself
    (weights that went bad must not pass for an exact result)."""
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
            and not _has_nan(a))


def _ordered(x):
    """Map float bits to unsigned integers that increase with the value; +0 and -0 coincide."""
    x = np.ascontiguousarray(x)
    width = x.dtype.itemsize * 8
    bits = x.view(f"u{x.dtype.itemsize}").astype(np.uint64)
    sign = np.uint64(1) << np.uint64(width - 1)
    negative = (bits & sign) != 0
    return np.where(negative, sign - (bits & ~sign), sign + bits)


def ulp_distance(a, b):
    """Elementwise distance in ULPs between two float arrays of one dtype (inf where either is
    NaN: a NaN is no distance from anything)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or not (a.dtype.kind == "f" or a.dtype == BFLOAT16):
        raise ValueError(f"ulp_distance needs two float arrays of one dtype, got {a.dtype}, {b.dtype}")
    ka, kb = _ordered(a), _ordered(b)
    dist = np.maximum(ka, kb) - np.minimum(ka, kb)
    nan_a, nan_b = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    out = dist.astype(np.float64)
    out[nan_a | nan_b] = np.inf
    return out


def max_ulp(a, b):
    """The largest ULP distance (0 for empty arrays; exact-equality check for integers)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size == 0:
        return 0.0
    if a.dtype.kind in "iu":
        return 0.0 if np.array_equal(a, b) else float(np.max(np.abs(a.astype(np.float64) - b)))
    return float(np.max(ulp_distance(a, b)))


def normalized_error(computed, reference, abs_sum, dtype=None):
    """max |computed - reference| / (u * abs_sum), elementwise abs_sum = sum of |terms|.

    ``reference`` should be exact or nearly (float64 for float32 data). 0 where
    both the error and abs_sum are 0; inf where abs_sum is 0 but the error is not, and
    where either value is NaN.
    """
    computed = np.asarray(computed)
    u = unit_roundoff(dtype or computed.dtype)
    err = np.abs(computed.astype(np.float64) - np.asarray(reference, np.float64))
    if err.size == 0:
        return 0.0
    scale = u * np.asarray(abs_sum, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / scale)
    ratio[np.isnan(ratio)] = np.inf
    return float(np.max(ratio))


def compare(computed, serial, reference=None, abs_sum=None):
    """The numerics report (ARCHITECTURE.md, "Numerics"): bitwise equality and max ULP against ``serial``,
    and the normalised error against an exact ``reference`` when given."""
    report = {"bitwise_equal": bitwise_equal(computed, serial), "max_ulp": max_ulp(computed, serial)}
    if reference is not None:
        report["max_normalized_error"] = normalized_error(computed, reference, abs_sum)
    return report


def digest(x):
    """A short fingerprint of an array's dtype, shape and bits."""
    x = np.ascontiguousarray(x)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    return h.hexdigest()


def ranks_agree(comm, x):
    """True on every rank iff every rank holds bitwise-identical ``x``.

    Compares fingerprints (small control data), not the arrays themselves.
    """
    prints = comm.allgather(digest(x))
    return all(d == prints[0] for d in prints)
