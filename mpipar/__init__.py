"""mpipar: parallel computing for language models, by hand, in NumPy over MPI.

Packages (ARCHITECTURE.md has the map and the data flow):
    collectives  hand-written allreduce / allgather / reduce_scatter / broadcast on a counting
                 Channel; 16-bit wires (lowp); the non-blocking ring (nonblocking)
    measure      CostModel (alpha-beta-gamma), CommLedger, numerics, units
    parallel     Mesh (dp x tp), Megatron's tensor-parallel operators, gradient buckets,
                 data-parallel training steps
    models       GPT-2 written once for any split: config, parameter table, layers, loss, AdamW,
                 checkpoints
    tasks        the addition task the shipped model was trained on
    cli, launch  what the entry points share; running a job from a notebook
Entry points: python -m mpipar.demo | mpipar.demo_collectives | mpipar.train | mpipar.bench
"""

__version__ = "0.1.0"
