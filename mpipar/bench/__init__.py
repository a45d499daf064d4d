"""Benchmarks: ``python -m mpipar.bench COMMAND``, one file per command, JSON out."""
