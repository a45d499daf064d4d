"""Test harness for running the suite on every rank of an MPI job.

* Each rank gets its own ``--basetemp``: ranks would otherwise race to clean the
  same temporary folder.
* Only rank 0 prints the pytest report. Another rank's report is captured and
  printed only if that rank had a failure, headed with its rank number.
"""
import io
import os
import sys
import tempfile

import pytest


def _world():
    if "mpi4py.MPI" not in sys.modules and not os.environ.get("PMI_RANK") \
            and not os.environ.get("OMPI_COMM_WORLD_RANK"):
        return 0, 1
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


RANK, SIZE = _world()


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    if SIZE == 1:
        return
    if config.option.basetemp is None:
        config.option.basetemp = os.path.join(
            tempfile.mkdtemp(prefix=f"mpipar-rank{RANK}-"), "pytest")
    if RANK != 0:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            config._mpipar_buffer = io.StringIO()
            reporter._tw = type(reporter._tw)(file=config._mpipar_buffer)


def pytest_sessionfinish(session, exitstatus):
    session.config._mpipar_failed = exitstatus not in (0, 5) or session.testsfailed > 0


def pytest_unconfigure(config):
    buffer = getattr(config, "_mpipar_buffer", None)
    if buffer is not None and getattr(config, "_mpipar_failed", False):
        sys.stdout.write(f"\n===== report of rank {RANK} of {SIZE} (it had failures) =====\n")
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
