"""Two steps of a two-stage pipeline with its messages on the communication thread, run by
test_pipeline_engine_exit.py as ``pipeline_engine_job.py CASE``:

    ok      the thread must stop at interpreter exit, and the job exit 0
    fail    rank 1's message loop fails on its communication thread after a few messages (rank
            0 waits for rank 1's messages forever): the claim re-raises it and the job must end
"""
import sys

from mpi4py import MPI

from mpipar import launch
from mpipar.models import GPTConfig, init_params
from mpipar.parallel import pipeline_engine
from mpipar.parallel.mesh import Mesh
from mpipar.parallel.pipeline_train import PipelineTraining
from mpipar.parallel.schedules import make_schedule
from mpipar.tasks.addition import AdditionTask

case = sys.argv[1]
comm = MPI.COMM_WORLD
task = AdditionTask(digits=2, seed=0, heldout=10)
config = GPTConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len, n_embd=16, n_head=2, n_layer=2)
if case == "fail" and comm.Get_rank() == 1:
    calls, real = [], pipeline_engine.wait_any

    def broken(requests, status):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("injected failure")
        return real(requests, status)
    pipeline_engine.wait_any = broken
with Mesh(comm, 1, 1, pp=2) as mesh:
    training = PipelineTraining(config, init_params(config, 0), mesh, make_schedule("1f1b", 2, 4),
                                overlap="thread", optimizer=dict(lr=1e-3))
    losses = [training.step(task.batch(step, 8), task.loss_mask())["loss"] for step in range(2)]
launch.emit(dict(losses=losses, engine_alive=training.pipe.engine.alive))
