"""mpipar: parallel computing for language models, by hand, in NumPy over MPI.

Modules (see README.md for the lesson index):
    collectives      hand-written allreduce / allgather / reduce_scatter / broadcast
    ledger           CommLedger (what every collective cost); cost_model: CostModel (alpha-beta-gamma)
    numerics         bitwise / ULP / normalised-error comparison
    tensor_parallel  Megatron's operators and the shards a process computes
    model            GPT-2, written once for any tensor-parallel split
    backward, loss, optim   training: the backward pass by hand, vocab-parallel cross-entropy, AdamW
    data_parallel, overlap, mesh   gradient sums over replicas, overlapped with backward; dp x tp
    compressed       all-reduce over a 16-bit wire, rounded per hop or once
    launch           run an mpipar job with N ranks from a notebook and get its JSON back
Entry points: python -m mpipar.demo | mpipar.demo_collectives | mpipar.train | mpipar.bench
"""

__version__ = "0.1.0"
