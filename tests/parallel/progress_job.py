"""A two-step data-parallel job with the gradient buckets on the communication thread, run by
test_progress_exit.py as ``progress_job.py CASE``:

    ok      no close(): the thread must stop at interpreter exit, and the job exit 0
    fail    rank 1's buckets fail on its communication thread (the others wait for
            its messages forever): finish() re-raises it and the job must end
    stuck   the same, but rank 1's main thread is blocked in a barrier the others never
            reach: the engine itself must end the job (abort_after)
"""
import sys

from mpi4py import MPI

from mpipar import launch
from mpipar.collectives import ring_driver
from mpipar.collectives.progress import ProgressEngine
from mpipar.models import GPT, PRESETS, init_params
from mpipar.models.optim import AdamW
from mpipar.parallel.data_parallel import DataParallel
from mpipar.tasks.addition import AdditionTask

case = sys.argv[1]
comm = MPI.COMM_WORLD
task = AdditionTask(digits=2, seed=0, heldout=10)
config = PRESETS["tiny"]
model = GPT(config, init_params(config, 0), MPI.COMM_SELF)
engine = ProgressEngine(abort_after=2.0)
trainer = DataParallel(model, comm, AdamW(model, lr=1e-3), bucket_bytes=4096, overlap="thread",
                       engine=engine)
if case != "ok" and comm.Get_rank() == 1:
    def broken(driver, count):
        raise OSError("injected failure")
    ring_driver.RingDriver.run = broken  # what the thread runs: every bucket's ring
    if case == "stuck":
        trainer.buckets.finish = lambda average: comm.Barrier()  # never returns
losses = [trainer.step(task.batch(step, 4), task.loss_mask())["loss"] for step in range(2)]
launch.emit(dict(losses=losses, engine_alive=engine.alive))
