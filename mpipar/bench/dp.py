"""python -m mpipar.bench dp -- data-parallel step time with and without overlap.

    mpirun -n 4 python -m mpi4py -m mpipar.bench dp --preset small --batch 16

One training step of a GPT preset (random weights and tokens: only the shapes
matter for time) on a global batch split over the ranks; gradients summed with
the hand-written ring all-reduce in buckets. Steps alternate between
``overlap=False`` (all buckets all-reduced after backward) and ``overlap=True``
(each bucket's all-reduce started as soon as backward has produced it, and
advanced between layers), so both see the same background load. Reported: the
median step time of each, the backward time, the time spent waiting for the
all-reduces after backward, the gradient bytes per step, and the last overlapped
step's bucket timeline of every rank.
"""
import argparse
import json

from mpi4py import MPI
import numpy as np

from ..models import GPT, PRESETS, init_params
from ..models.optim import AdamW
from ..parallel.data_parallel import DataParallel


def add_parser(commands):
    c = commands.add_parser("dp", help="data-parallel step time, with and without overlap",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--preset", choices=list(PRESETS), default="small", help="model (default small)")
    c.add_argument("--batch", type=int, default=16, help="global batch (default 16)")
    c.add_argument("--seq", type=int, default=32, help="tokens per sequence (default 32)")
    c.add_argument("--bucket-kb", type=float, default=512, help="bucket size in KiB (default 512)")
    c.add_argument("--steps", type=int, default=6, help="timed steps of each kind (default 6)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    if args.batch < comm.Get_size() or args.steps < 1 or args.seq < 2 or args.bucket_kb <= 0:
        return "--batch must be >= the number of ranks, --steps >= 1, --seq >= 2, --bucket-kb > 0"
    if args.seq + 1 > PRESETS[args.preset].n_ctx:
        return f"--seq {args.seq} does not fit the context of {PRESETS[args.preset].n_ctx}"
    return None


def run(args, comm):
    config = PRESETS[args.preset]
    rng = np.random.default_rng(0)
    trainers = {}
    for overlap in (False, True):
        model = GPT(config, init_params(config, 0), MPI.COMM_SELF)
        trainers[overlap] = DataParallel(model, comm, AdamW(model, lr=1e-4),
                                         bucket_bytes=int(args.bucket_kb * 1024), overlap=overlap)
    mask = np.ones(args.seq)
    results = {False: [], True: []}
    for step in range(args.steps + 1):  # step 0 warms up
        tokens = rng.integers(0, config.vocab_size, (args.batch, args.seq + 1))
        for overlap in (False, True):
            comm.Barrier()
            out = trainers[overlap].step(tokens, mask)
            if step:
                results[overlap].append({k: comm.allreduce(out[k], op=MPI.MAX)
                                         for k in ("seconds", "backward_seconds", "sync_wait_seconds")})
    med = {o: {k: float(np.median([r[k] for r in results[o]])) for k in results[o][0]}
           for o in results}
    timelines = comm.gather(out["timeline"], root=0)
    grad_bytes = sum(b.nbytes for b in trainers[True].buckets.buffers) if trainers[True].buckets else 0
    if comm.Get_rank() == 0:
        print(f"{args.preset}: {comm.Get_size()} rank(s), global batch {args.batch} x {args.seq} tokens,"
              f" {grad_bytes / 2**20:.2f} MiB of gradients in "
              f"{len(trainers[True].buckets.buffers) if trainers[True].buckets else 0} buckets")
        for o, name in ((False, "after backward"), (True, "overlapped")):
            m = med[o]
            print(f"  all-reduce {name:<15} step {m['seconds'] * 1e3:8.1f} ms  backward "
                  f"{m['backward_seconds'] * 1e3:8.1f} ms  waiting after backward "
                  f"{m['sync_wait_seconds'] * 1e3:7.1f} ms")
        print(f"  overlap saves {100 * (1 - med[True]['seconds'] / med[False]['seconds']):.1f}% "
              f"of the step (medians of {args.steps})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(benchmark="dp", world_size=comm.Get_size(), preset=args.preset,
                               batch=args.batch, seq=args.seq, bucket_bytes=int(args.bucket_kb * 1024),
                               grad_bytes=int(grad_bytes), steps=args.steps,
                               no_overlap=med[False], overlap=med[True], timeline=timelines), f, indent=1)
    return 0
