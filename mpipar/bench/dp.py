"""python -m mpipar.bench dp -- data-parallel step time: all-reduce after backward, polled
during it, or on a communication thread.

    mpirun -n 4 python -m mpi4py -m mpipar.bench dp --preset small --batch 16
    MPIR_CVAR_ASYNC_PROGRESS=1 mpirun -n 4 python -m mpi4py -m mpipar.bench dp   # MPICH

One training step of a GPT preset (random weights and tokens: only the shapes
matter for time) on a global batch split over the ranks; gradients summed with
the hand-written ring all-reduce in buckets. The modes (--modes) take turns step
by step, so all see the same background load:

  none    every bucket all-reduced after backward (the baseline)
  poll    each bucket's ring started as soon as backward has produced it and
          advanced between layers (messages move only at those calls)
  thread  each bucket's ring handed to a communication thread, which waits inside
          MPI and posts every step as soon as the last has arrived
          (mpipar.collectives.progress; needs MPI_THREAD_MULTIPLE)

Reported: the median step time of each mode, the forward + backward time (a thread
competing for the rank's core shows here), the wait for the all-reduces after backward
-- on the slowest rank, which includes waiting for a rank still in backward, and after
the last rank's backward ended, which is the communication not hidden -- and each mode's
bucket timeline: every bucket's start and end relative to the end of backward, how many
finished during backward, for every rank.

MPICH's own asynchronous progress thread can only be switched on before MPI starts:
launch the job with MPIR_CVAR_ASYNC_PROGRESS=1 in the environment (mpirun passes it
on), and the "poll" and "none" rows then show what the library's thread does with the
same rings. The output says whether it was on. Open MPI has no such thread.
"""
import argparse
import os

from mpi4py import MPI
import numpy as np

from ..cli import comma_list, json_path_problem, write_json
from ..collectives.progress import ProgressEngine, thread_level, thread_level_problem
from ..measure.memory import too_big
from ..models import GPT, PRESETS, init_params
from ..models.optim import AdamW
from ..models.params import param_count
from ..parallel.buckets import MODES
from ..parallel.data_parallel import DataParallel
from .dp_report import bucket_summary, print_report
from .timing import medians, run_trials

FIGURES = ("seconds", "backward_seconds", "sync_wait_seconds")  #: of a step, as DataParallel.step times them
ASYNC_PROGRESS = "MPIR_CVAR_ASYNC_PROGRESS"


def add_parser(commands):
    c = commands.add_parser("dp", help="data-parallel step time: all-reduce after backward, "
                            "polled, or on a communication thread",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--preset", choices=list(PRESETS), default="small", help="model (default small)")
    c.add_argument("--batch", type=int, default=16, help="global batch (default 16)")
    c.add_argument("--seq", type=int, default=32, help="tokens per sequence (default 32)")
    c.add_argument("--bucket-kb", type=float, default=512, help="bucket size in KiB (default 512)")
    c.add_argument("--steps", type=int, default=6, help="timed steps of each mode (default 6)")
    c.add_argument("--modes", type=comma_list, default=None,
                   help="comma-separated, from none, poll, thread (default: all three; thread "
                        "only where MPI provides MPI_THREAD_MULTIPLE)")
    c.add_argument("--thread-poll-us", type=float, default=None, metavar="US",
                   help="the communication thread tests its messages every US microseconds, "
                        "sleeping between (default: it waits inside MPI_Waitall, spinning)")
    c.add_argument("--switch-interval-us", type=float, default=100, metavar="US",
                   help="Python's thread switch interval while the communication thread runs "
                        "(default 100; 0: leave Python's own, 5000)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def modes_of(args):
    """The modes to time: those asked for, or all that this MPI can run."""
    if args.modes is not None:
        return args.modes
    return [m for m in MODES if m != "thread" or thread_level_problem() is None]


def check(args, comm):
    if args.batch < comm.Get_size() or args.steps < 1 or args.seq < 2 or args.bucket_kb <= 0:
        return "--batch must be >= the number of ranks, --steps >= 1, --seq >= 2, --bucket-kb > 0"
    unknown = [m for m in args.modes or () if m not in MODES]
    if unknown:
        return f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}"
    if "thread" in modes_of(args) and thread_level_problem():
        return f"--modes thread: {thread_level_problem()}"
    if args.thread_poll_us is not None and not 0 < args.thread_poll_us <= 1e6:
        return f"--thread-poll-us must be in (0, 1e6], not {args.thread_poll_us}"
    if not 0 <= args.switch_interval_us <= 1e6:
        return f"--switch-interval-us must be in [0, 1e6], not {args.switch_interval_us}"
    config = PRESETS[args.preset]
    if args.seq + 1 > config.n_ctx:
        return f"--seq {args.seq} does not fit the context of {config.n_ctx}"
    # a replica keeps ~16 d float32 per token and layer for backward, and the logits; the
    # parameters, their gradients, AdamW's two moments and every mode's buckets
    per_token = 4 * (16 * config.n_embd * config.n_layer + 2 * config.vocab_size)
    n_params = param_count(config)
    need = -(-args.batch // comm.Get_size()) * args.seq * per_token \
        + 4 * n_params * (4 + len(modes_of(args)))
    return (too_big(f"--batch {args.batch} x --seq {args.seq}", need, comm.Get_size())
            or json_path_problem(comm, args.json))


def trainer_step(trainer, config, args, outputs):
    """A function of no arguments: one step of ``trainer`` on the next random global batch.
    Each trainer draws from its own generator of the same seed, so all see the same batches.
    Every step's output is appended to ``outputs``."""
    rng, mask = np.random.default_rng(0), np.ones(args.seq)

    def step():
        outputs.append(trainer.step(rng.integers(0, config.vocab_size, (args.batch, args.seq + 1)), mask))
        return outputs[-1]
    return step


def run(args, comm):
    config, modes = PRESETS[args.preset], modes_of(args)
    # one model and one optimizer for all modes: only time is measured, and at p = 16 on
    # one machine three copies of gpt2-small's weights and moments would not fit
    model = GPT(config, init_params(config, 0), MPI.COMM_SELF)
    optimizer = AdamW(model, lr=1e-6)
    poll = None if args.thread_poll_us is None else args.thread_poll_us * 1e-6
    engine = ProgressEngine(switch_interval=args.switch_interval_us * 1e-6 or None) \
        if "thread" in modes and comm.Get_size() > 1 else None
    trainers, steps, outputs = {}, {}, {mode: [] for mode in modes}
    for mode in modes:
        trainers[mode] = DataParallel(model, comm, optimizer, bucket_bytes=int(args.bucket_kb * 1024),
                                      overlap=mode, poll_seconds=poll, engine=engine)
        steps[mode] = trainer_step(trainers[mode], config, args, outputs[mode])
    figures = run_trials(comm, steps, args.steps, warmup=1,  # the step's own clock, not the loop's
                         figures=lambda out: dict({key: out[key] for key in FIGURES}, synced_seconds=
                                                  out["backward_seconds"] + out["sync_wait_seconds"]))
    for f in figures.values():  # trials start at a barrier: each rank's clock starts together
        f["wait_after_last_backward"] = [s - b for s, b in zip(f.pop("synced_seconds"),
                                                                f["backward_seconds"])]
    med = {mode: medians(figures[mode]) for mode in modes}
    timelines = {mode: comm.gather(relative_to_backward(outputs[mode][-1]), root=0) for mode in modes}
    if engine is not None:
        engine.close()
    some = next(iter(trainers.values())).buckets
    buffers = some.buffers if some else []
    result = dict(
        benchmark="dp", world_size=comm.Get_size(), preset=args.preset, batch=args.batch,
        seq=args.seq, bucket_bytes=int(args.bucket_kb * 1024), buckets=len(buffers),
        grad_bytes=int(sum(b.nbytes for b in buffers)), steps=args.steps,
        thread_level=thread_level(), thread_poll_seconds=poll,
        switch_interval_seconds=args.switch_interval_us * 1e-6 or None,
        mpich_async_progress=os.environ.get(ASYNC_PROGRESS, "0") not in ("", "0"),
        mpi_library=" ".join(MPI.Get_library_version().split()[:3]).rstrip(","),
        modes=med, trials=figures, timeline=timelines,
        buckets_during_backward={mode: bucket_summary(t) for mode, t in timelines.items()
                                 if mode != "none" and comm.Get_rank() == 0})
    if comm.Get_rank() == 0:
        print_report(result)
    write_json(comm, args.json, result)
    return 0


def relative_to_backward(out):
    """A step's bucket timeline with every time relative to the end of backward (negative:
    during backward), and the step's own figures."""
    end = out["backward_seconds"]
    rel = lambda t: None if t is None else t - end  # noqa: E731
    return dict(backward_seconds=end, sync_wait_seconds=out["sync_wait_seconds"],
                buckets=[dict(bucket=e["bucket"], nbytes=e["nbytes"], ready=rel(e["ready"]),
                              start=rel(e["start"]), end=rel(e["end"])) for e in out["timeline"]])

