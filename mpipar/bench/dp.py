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

from mpi4py import MPI
import numpy as np

from ..cli import json_path_problem, write_json
from ..measure.memory import too_big
from ..measure.units import format_bytes, format_seconds
from ..models import GPT, PRESETS, init_params
from ..models.optim import AdamW
from ..parallel.data_parallel import DataParallel
from .table import Column, format_table
from .timing import medians, run_trials

FIGURES = ("seconds", "backward_seconds", "sync_wait_seconds")  #: of a step, as DataParallel.step times them


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
    config = PRESETS[args.preset]
    if args.seq + 1 > config.n_ctx:
        return f"--seq {args.seq} does not fit the context of {config.n_ctx}"
    # a replica keeps ~16 d float32 per token and layer for backward, and the logits
    per_token = 4 * (16 * config.n_embd * config.n_layer + 2 * config.vocab_size)
    need = -(-args.batch // comm.Get_size()) * args.seq * per_token
    return (too_big(f"--batch {args.batch} x --seq {args.seq}", need, comm.Get_size())
            or json_path_problem(comm, args.json))


def trainer_step(trainer, config, args, outputs):
    """A function of no arguments: one step of ``trainer`` on the next random global batch.
    Each trainer draws from its own generator of the same seed, so both see the same batches.
    Every step's output is appended to ``outputs``."""
    rng, mask = np.random.default_rng(0), np.ones(args.seq)

    def step():
        outputs.append(trainer.step(rng.integers(0, config.vocab_size, (args.batch, args.seq + 1)), mask))
        return outputs[-1]
    return step


def run(args, comm):
    config = PRESETS[args.preset]
    trainers, steps, outputs = {}, {}, {False: [], True: []}
    for overlap in (False, True):
        model = GPT(config, init_params(config, 0), MPI.COMM_SELF)
        trainers[overlap] = DataParallel(model, comm, AdamW(model, lr=1e-4),
                                         bucket_bytes=int(args.bucket_kb * 1024), overlap=overlap)
        steps[overlap] = trainer_step(trainers[overlap], config, args, outputs[overlap])
    figures = run_trials(comm, steps, args.steps, warmup=1,  # the step's own clock, not the loop's
                         figures=lambda out: {key: out[key] for key in FIGURES})
    med = {overlap: medians(figures[overlap]) for overlap in (False, True)}
    timelines = comm.gather(outputs[True][-1]["timeline"], root=0)
    buffers = trainers[True].buckets.buffers if trainers[True].buckets else []
    grad_bytes = sum(b.nbytes for b in buffers)
    if comm.Get_rank() == 0:
        print(f"{args.preset}: {comm.Get_size()} rank(s), global batch {args.batch} x {args.seq} tokens,"
              f" {format_bytes(grad_bytes)} of gradients in {len(buffers)} buckets")
        print_modes(med)
        print(f"  overlap saves {100 * (1 - med[True]['seconds'] / med[False]['seconds']):.1f}% "
              f"of the step (medians of {args.steps})", flush=True)
    write_json(comm, args.json, dict(
        benchmark="dp", world_size=comm.Get_size(), preset=args.preset, batch=args.batch,
        seq=args.seq, bucket_bytes=int(args.bucket_kb * 1024), grad_bytes=int(grad_bytes),
        steps=args.steps, no_overlap=med[False], overlap=med[True], timeline=timelines))
    return 0


def print_modes(med):
    """One row per mode: the medians of the step, its backward, the wait after backward."""
    columns = [Column("all-reduce", align="<"), Column("step", format_seconds),
               Column("backward", format_seconds), Column("waiting after backward", format_seconds)]
    rows = [[name, *(med[overlap][key] for key in FIGURES)]
            for overlap, name in ((False, "after backward"), (True, "overlapped"))]
    print(format_table(columns, rows, indent="  "))
