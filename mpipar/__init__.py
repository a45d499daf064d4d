"""mpipar: parallel computing for language models, by hand, in NumPy over MPI.

Modules (see README.md for the lesson index):
    collectives  hand-written allreduce / allgather / reduce_scatter / broadcast
    ledger       CommLedger (what every collective cost) and CostModel (alpha-beta-gamma)
    numerics     bitwise / ULP / normalised-error comparison
    launch       run an mpipar job with N ranks from a notebook and get its JSON back
"""

__version__ = "0.1.0"
