"""A tensor-parallel backward whose input-gradient reductions run on a communication thread,
run by test_tp_async_exit.py as ``tp_async_job.py CASE``:

    ok      two steps: the job exits 0 (the engine's thread stops at interpreter exit)
    fail    rank 1's first reduction (the LM head's) fails on its communication thread while
            rank 0's waits for its messages forever: rank 1's wait() re-raises it and the
            whole job must end with that one message
"""
import sys

from mpi4py import MPI
import numpy as np

from mpipar import launch
from mpipar.collectives.progress import ProgressEngine
from mpipar.models import GPT, PRESETS, init_params

case = sys.argv[1]
comm = MPI.COMM_WORLD
config = PRESETS["tiny"]
model = GPT(config, init_params(config, 0), comm, algorithm="ring")
model.tp.engine = ProgressEngine(abort_after=10.0)
if case == "fail" and comm.Get_rank() == 1:
    def broken(parts):
        raise OSError("injected failure")
    model.tp.copy_to_tp_backward = broken
tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 9))
weights = np.full((2, 8), 1 / 16, np.float32)
losses = [model.loss_and_grads(tokens[:, :-1], tokens[:, 1:], weights)[0] for _ in range(2)]
launch.emit(dict(losses=[float(v) for v in losses]))
