"""Memory per rank, as the operating system counts it: the peak resident set size.

``ru_maxrss`` (getrusage(2)) is the largest resident set the process has had so far:
its interpreter, MPI library, parameters, activations and every temporary copy that
was ever alive at once. Linux reports it in KiB, macOS in bytes. The figure of a job
is the maximum over its ranks: parallel work fits when its largest rank fits.
"""
import resource
import sys


def peak_rss_bytes():
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_rss_per_rank(comm):
    """Every rank's peak resident set size in bytes, in rank order, on every rank (control data)."""
    return comm.allgather(peak_rss_bytes())
