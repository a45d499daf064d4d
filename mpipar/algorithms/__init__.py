"""The collective algorithms, one file per collective, written on point-to-point calls.

Every algorithm works on a 1-D contiguous array (``mpipar.collectives`` flattens,
validates and records) and talks only through a :class:`Channel`, which counts
what this rank sent so the ledger can compare it with the cost formulas.
"""
