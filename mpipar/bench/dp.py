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
          (mpipar.collectives.progress; needs MPI_THREAD_MULTIPLE); one row per
          --in-flight value: "thread" runs one ring after another, "thread-N" keeps N
          buckets' rings in flight at once and waits on all their messages together
          (mpipar.collectives.ring_driver)

With --micro-batches M > 1 each replica's share is cut into M micro-batches
(gradient accumulation; mpipar.parallel.dp_micro) and more rows follow:

  micro-MODE  every micro-batch's buckets all-reduced -- after its own backward
          (micro-none), or while the next micro-batch computes (micro-poll,
          micro-thread with the largest --in-flight): M times the bytes
  no-sync  the micro-batches' gradients summed locally, the sum all-reduced during
          the last backward only (PyTorch DDP's no_sync), on the thread if the modes
          include it, else polled: the bytes of one all-reduce

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
    c.add_argument("--in-flight", type=comma_list, default=["1", "all"],
                   metavar="N[,N...]", help="buckets' rings in flight at once on the "
                   "communication thread, one thread row per value; all: every complete "
                   "bucket's (default 1,all)")
    c.add_argument("--micro-batches", type=int, default=1, metavar="M",
                   help="micro-batches per replica for the micro-MODE and no-sync rows "
                        "(default 1: no such rows)")
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


def in_flight_of(args):
    """--in-flight as whole numbers >= 1, or the error message."""
    try:
        values = [None if v == "all" else int(v) for v in args.in_flight]
    except ValueError:
        values = []
    if not values or min((v for v in values if v is not None), default=1) < 1:
        return f"--in-flight wants whole numbers >= 1 or all, not {','.join(args.in_flight)}"
    return values


def most(flights):
    """The largest of --in-flight's values (None: all)."""
    return None if None in flights else max(flights)


def variants_of(args):
    """{row: DataParallel options} in the table's order."""
    modes, flights = modes_of(args), in_flight_of(args)
    out = {}
    for mode in modes:
        for n in (flights if mode == "thread" else [None]):
            key = mode if mode != "thread" or n == 1 else f"{mode}-{'all' if n is None else n}"
            out[key] = dict(overlap=mode, in_flight=n)
    if args.micro_batches > 1:
        micro = dict(micro_batches=args.micro_batches)
        for mode in modes:
            out[f"micro-{mode}"] = dict(micro, overlap=mode, sync="each",
                                        in_flight=most(flights) if mode == "thread" else None)
        last = "thread" if "thread" in modes else "poll"
        out["no-sync"] = dict(micro, overlap=last, sync="last",
                              in_flight=most(flights) if last == "thread" else None)
    return out


def check(args, comm):
    if args.batch < comm.Get_size() or args.steps < 1 or args.seq < 2 or args.bucket_kb <= 0:
        return "--batch must be >= the number of ranks, --steps >= 1, --seq >= 2, --bucket-kb > 0"
    if isinstance(in_flight_of(args), str):
        return in_flight_of(args)
    if args.micro_batches < 1 or args.micro_batches > args.batch // comm.Get_size():
        return (f"--micro-batches must be in [1, {args.batch // comm.Get_size()}] (the examples "
                f"of the smallest replica: --batch {args.batch} over {comm.Get_size()} ranks), "
                f"not {args.micro_batches}")
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
    n_params = param_count(config)  # micro-MODE rows hold two sets of buckets and the sum
    sets = sum(3 if v.get("sync") == "each" and v["overlap"] != "none" else 1
               for v in variants_of(args).values())
    need = -(-args.batch // comm.Get_size()) * args.seq * per_token + 4 * n_params * (4 + sets)
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
    config, modes, variants = PRESETS[args.preset], modes_of(args), variants_of(args)
    # one model and one optimizer for all modes: only time is measured, and at p = 16 on
    # one machine three copies of gpt2-small's weights and moments would not fit
    model = GPT(config, init_params(config, 0), MPI.COMM_SELF)
    optimizer = AdamW(model, lr=1e-6)
    poll = None if args.thread_poll_us is None else args.thread_poll_us * 1e-6
    engine = ProgressEngine(switch_interval=args.switch_interval_us * 1e-6 or None) \
        if "thread" in modes and comm.Get_size() > 1 else None
    trainers, steps, outputs = {}, {}, {key: [] for key in variants}
    for key, options in variants.items():
        trainers[key] = DataParallel(model, comm, optimizer, bucket_bytes=int(args.bucket_kb * 1024),
                                     poll_seconds=poll, engine=engine, **options)
        steps[key] = trainer_step(trainers[key], config, args, outputs[key])
    figures = run_trials(comm, steps, args.steps, warmup=1,  # the step's own clock, not the loop's
                         figures=lambda out: dict({key: out[key] for key in FIGURES}, synced_seconds=
                                                  out["backward_seconds"] + out["sync_wait_seconds"]))
    for f in figures.values():  # trials start at a barrier: each rank's clock starts together
        f["wait_after_last_backward"] = [s - b for s, b in zip(f.pop("synced_seconds"),
                                                                f["backward_seconds"])]
    med = {key: medians(figures[key]) for key in variants}
    timelines = {key: comm.gather(relative_to_backward(outputs[key][-1]), root=0) for key in variants}
    for trainer in trainers.values():
        trainer.close()
    if engine is not None:
        engine.close()
    some = next(iter(trainers.values())).buckets
    buffers = some.buffers if some else []
    result = dict(
        benchmark="dp", world_size=comm.Get_size(), preset=args.preset, batch=args.batch,
        seq=args.seq, bucket_bytes=int(args.bucket_kb * 1024), buckets=len(buffers),
        grad_bytes=int(sum(b.nbytes for b in buffers)), steps=args.steps,
        micro_batches=args.micro_batches, variants=variants,
        thread_level=thread_level(), thread_poll_seconds=poll,
        switch_interval_seconds=args.switch_interval_us * 1e-6 or None,
        mpich_async_progress=os.environ.get(ASYNC_PROGRESS, "0") not in ("", "0"),
        mpi_library=" ".join(MPI.Get_library_version().split()[:3]).rstrip(","),
        modes=med, trials=figures, timeline=timelines,
        buckets_during_backward={key: bucket_summary(t) for key, t in timelines.items()
                                 if variants[key]["overlap"] != "none" and comm.Get_rank() == 0})
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

