"""Benchmarks: ``python -m mpipar.bench COMMAND``, one file per command, JSON out.

__main__.py dispatches; collectives, ledger, forward, dp and tradeoff are the commands
(collectives_report and tradeoff_report hold the rows and tables of the two big ones);
timing.py is the one timing loop and table.py the one table printer they share.
"""
