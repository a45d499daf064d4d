"""Where one tensor-parallel forward spends its time, by Python function (cProfile, rank 0).

    mpirun -n 8 python -m mpi4py tools/profile_forward.py [preset] [T]

Every rank builds the preset's model (random weights), runs two warm-up forwards, then three
under cProfile; rank 0 prints the functions with the most time of their own.
"""
import cProfile
import pstats
import sys

from mpi4py import MPI
import numpy as np

from mpipar.models import GPT
from mpipar.models.checkpoint import load_model

preset = sys.argv[1] if len(sys.argv) > 1 else "gpt2-small"
T = int(sys.argv[2]) if len(sys.argv) > 2 else 256
comm = MPI.COMM_WORLD
config, source, _ = load_model(preset=preset, seed=0, sliced=True)
model = GPT(config, source, comm)
tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, T))
for _ in range(2):
    model.forward(tokens)
comm.Barrier()
profile = cProfile.Profile()
profile.enable()
for _ in range(3):
    model.forward(tokens)
profile.disable()
if comm.Get_rank() == 0:
    pstats.Stats(profile).sort_stats("tottime").print_stats(22)
