"""Benchmarks: ``python -m mpipar.bench COMMAND``, one file per command, JSON out.

__main__.py dispatches; collectives, ledger, forward, dp, tradeoff and pp are the commands
(collectives_report, tradeoff_report and pp_report hold the rows and tables of the big ones;
tradeoff_models the models tradeoff measures);
timing.py is the one timing loop and table.py the one table printer they share.
"""
