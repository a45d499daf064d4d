"""python -m mpipar.bench pp -- pipeline step time and bubble of every schedule as m grows.

    mpirun -n 4 python -m mpi4py -m mpipar.bench pp [--json out.json]
    mpirun -n 8 python -m mpi4py -m mpipar.bench pp --schedules 1f1b,zb-h1 --micro-batches 8,32

The whole world is one pipeline: p = the number of ranks, dp = tp = 1. The model is a
GPT-2 of random weights (seed 0) trained on random tokens -- only the shapes matter for
time: --n-layer blocks of width --n-embd, micro-batches of --batch-per-micro sequences
of --seq tokens, so a step's global batch is m times that. For every schedule of
--schedules and every m of --micro-batches one PipelineTraining is built and stepped:
one untimed warm-up step, then --trials steps, each a barrier and the step on its own
clock (mpipar.bench.timing). The interleaved schedule (--virtual-stages chunks per rank)
needs m a multiple of p; other m are skipped, with a note.

Reported for each (schedule, m) -- mpipar.parallel.pipeline_report measures, the rest
predicts:

* step, pipeline: the median over trials of the slowest rank's (MPI.MAX) step, and of
  its pipeline part (the schedule's forwards and backwards; the step adds the tied
  embedding's sum, the clipping and AdamW);
* bubble measured: per rank, 1 - compute / pipeline time (median over trials), its mean
  and max over ranks; waiting for a core counts as bubble when ranks outnumber cores;
* formula: the bubble of the step with equal stages, (p - 1) / (m + p - 1) for GPipe
  and 1F1B (Huang et al. 2019), (p - 1) / (v m + p - 1) interleaved (Narayanan et al.
  2021, sec. 2.2.2), (p - 1) / (3 m + p - 1) ZB-H1 (Qi et al. 2024, sec. 3.1); and the
  same bubble as a share of the ideal time, (p - 1) / m etc. (schedule_formulas);
* simulated: schedule_sim.simulate with the F, B, W times this run measured, per stage;
* peak activations: the most bytes a rank held for backward (max over ranks), and the
  most micro-batches (chunks, interleaved) rank 0 held against ``predicted_peak``:
  GPipe m, 1F1B min(p, m), ZB-H1 min(p, m), interleaved v p + p - 1;
* p2p: the bytes sent between stages in one step (a CommLedger), beside
  2 (S - 1) m b T d x 4 bytes for S = p v stages: per micro-batch an activation forward
  and a gradient back across each of the S - 1 cuts, (b, T, d) float32 each.

--overlap: what moves the messages while a stage computes (mpipar.parallel.pipeline_parallel),
one PipelineTraining per mode, their steps alternating trial by trial (the same background
load): poll tests the sends between steps, thread completes every message on a communication
thread inside MPI (pipeline_engine; MPI_THREAD_MULTIPLE), none only waits. An MPI library
moves a large (rendezvous) message only while both ranks are inside MPI, so without the
thread an activation may wait for its sender's next step. Default poll,thread (poll alone
where the library lacks MPI_THREAD_MULTIPLE). A second table puts the modes side by side:
the step's median per mode, the first mode's step over each other's, and the main thread's
wait per stage (median over trials of each rank's time blocked on receives: its bubble).
The thread spins in MPI_Waitany: give each rank two cores (Open MPI: mpirun --map-by
slot:PE=2 --bind-to core), or the thread takes turns with the stage's compute.
"""
import argparse
import math

from mpi4py import MPI
import numpy as np

from ..cli import Progress, comma_list, json_path_problem, write_json
from ..collectives.progress import ProgressEngine, thread_level_problem
from ..measure.ledger import CommLedger
from ..measure.memory import too_big
from ..measure.units import format_seconds
from ..models import GPTConfig, RandomSource
from ..parallel.buckets import MODES
from ..parallel.mesh import Mesh
from ..parallel.pipeline_report import pipeline_entry
from ..parallel.pipeline_stage import stage_problem
from ..parallel.pipeline_train import PipelineTraining
from ..parallel.schedules import SCHEDULE_NAMES, make_schedule
from .pp_report import comparison, print_comparison, print_table, row_of
from .timing import run_trials

SEED = 0  #: of the weights and of the tokens
LR = 1e-4  #: AdamW's learning rate (only the time of the update matters)
TIMED = ("seconds", "pipeline_seconds")  #: a step's figures reduced over ranks with MPI.MAX


def int_list(text):
    """'4, 8,16' -> [4, 8, 16] (repeats dropped, order kept)."""
    try:
        return [int(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}") from None


def add_parser(commands):
    c = commands.add_parser("pp", help="pipeline step time and bubble of each schedule as m grows",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--schedules", type=comma_list, default=list(SCHEDULE_NAMES), metavar="LIST",
                   help=f"pipeline schedules, comma-separated (default all: {','.join(SCHEDULE_NAMES)})")
    c.add_argument("--micro-batches", type=int_list, metavar="LIST",
                   help="micro-batches per step m, comma-separated (default p,2p,4p,8p for p ranks)")
    c.add_argument("--virtual-stages", type=int, default=2, metavar="V",
                   help="model chunks per rank of the interleaved schedule (default 2)")
    c.add_argument("--n-layer", type=int, metavar="L", help="transformer blocks (default: the "
                   "number of stages, p v with interleaved, else p: one block per stage or chunk, "
                   "equal work everywhere)")
    c.add_argument("--n-embd", type=int, default=128, metavar="D", help="model width d (default 128)")
    c.add_argument("--n-head", type=int, default=4, metavar="H", help="attention heads (default 4)")
    c.add_argument("--vocab", type=int, default=256, metavar="N", help="vocabulary of the random tokens and "
                   "the LM head (default 256)")
    c.add_argument("--seq", type=int, default=32, metavar="T", help="tokens per sequence (default 32)")
    c.add_argument("--batch-per-micro", type=int, default=4, metavar="B",
                   help="sequences per micro-batch b (default 4; a step trains on m b sequences)")
    c.add_argument("--trials", type=int, default=3, metavar="N",
                   help="timed steps per schedule and m, after one warm-up step (default 3)")
    c.add_argument("--overlap", type=comma_list, metavar="LIST",
                   help=f"how messages move while a stage computes, comma-separated among "
                        f"{','.join(MODES)}: poll tests the sends between steps, thread waits on "
                        f"them on a communication thread inside MPI, none only in the waits "
                        f"(default poll,thread; poll without MPI_THREAD_MULTIPLE)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the rows and settings here")
    c.set_defaults(check=check, run=run, parser=c)


def modes_of(args):
    """The overlap modes asked for (default poll and, if this MPI allows it, thread)."""
    if args.overlap:
        return args.overlap
    return ["poll"] + (["thread"] if thread_level_problem() is None else [])


def micro_batch_counts(args, p):
    """The m values asked for (default p, 2p, 4p, 8p)."""
    return args.micro_batches or [p, 2 * p, 4 * p, 8 * p]


def cases(args, p):
    """([(schedule, m, v) to run, schedule by schedule], [(schedule, m, why not)])."""
    runs, skipped = [], []
    for name in args.schedules:
        v = args.virtual_stages if name == "interleaved" else 1
        for m in micro_batch_counts(args, p):
            if name == "interleaved" and m % p:
                skipped.append((name, m, f"m = {m} is not a multiple of p = {p}"))
            else:
                runs.append((name, m, v))
    return runs, skipped


def stage_counts(args, p):
    """The number of model stages of every schedule asked for."""
    return {p * (args.virtual_stages if name == "interleaved" else 1) for name in args.schedules}


def n_layer(args, p):
    """--n-layer, or the least common multiple of the stage counts (equal stages)."""
    return args.n_layer if args.n_layer is not None else math.lcm(*stage_counts(args, p))


def model_config(args, p):
    return GPTConfig(vocab_size=args.vocab, n_ctx=args.seq, n_embd=args.n_embd,
                     n_head=args.n_head, n_layer=n_layer(args, p))


def check(args, comm):
    p = comm.Get_size()
    unknown = [name for name in args.schedules if name not in SCHEDULE_NAMES]
    if unknown:
        return f"unknown schedule {unknown[0]!r} in --schedules; choose among {', '.join(SCHEDULE_NAMES)}"
    unknown = [mode for mode in modes_of(args) if mode not in MODES]
    if unknown:
        return f"unknown mode {unknown[0]!r} in --overlap; choose among {', '.join(MODES)}"
    if "thread" in modes_of(args) and thread_level_problem():
        return f"--overlap thread: {thread_level_problem()}"
    bad = [m for m in micro_batch_counts(args, p) if m < 1]
    if bad:
        return f"--micro-batches must be at least 1, got {bad[0]}"
    if "interleaved" in args.schedules and args.virtual_stages < 2:
        return f"--virtual-stages must be at least 2 for the interleaved schedule, got {args.virtual_stages}"
    if args.trials < 1 or args.batch_per_micro < 1 or args.seq < 1 or args.vocab < 2:
        return "--trials, --batch-per-micro and --seq must be at least 1, --vocab at least 2"
    problem = model_config(args, p).problems()
    if problem:
        return f"the model: {problem} (--n-embd, --n-head, --n-layer)"
    problem = stage_problem(n_layer(args, p), max(stage_counts(args, p)))
    if problem:
        return problem
    # a stage keeps at most max m micro-batches' activations (GPipe): ~16 d float32 per token
    # and layer, the last stage the logits too
    per_token = 4 * (16 * args.n_embd * -(-n_layer(args, p) // p) + 2 * args.vocab)
    need = max(micro_batch_counts(args, p)) * args.batch_per_micro * args.seq * per_token
    problem = too_big(f"--batch-per-micro {args.batch_per_micro} x --seq {args.seq} x --micro-batches "
                      f"{max(micro_batch_counts(args, p))}", need, p)
    if problem:
        return problem
    runs, skipped = cases(args, p)
    if not runs:
        return f"nothing to run: the interleaved schedule needs --micro-batches multiples of p = {p}"
    for name, m, v in runs:  # whatever make_schedule refuses, refused before any message
        try:
            make_schedule(name, p, m, v)
        except ValueError as error:
            return str(error)
    return json_path_problem(comm, args.json)


def measure(args, config, mesh, schedule, engine):
    """Time ``schedule``'s steps on ``mesh`` in every overlap mode, alternating; the rows (one
    per mode) on rank 0 (None elsewhere)."""
    modes = modes_of(args)
    trainings = {mode: PipelineTraining(config, RandomSource(config, SEED), mesh, schedule,
                                        optimizer=dict(lr=LR), overlap=mode, engine=engine)
                 for mode in modes}
    steps, ledgers = {mode: [] for mode in modes}, {}

    def stepper(mode):
        rng, mask = np.random.default_rng(SEED), np.ones(args.seq)
        n = schedule.m * args.batch_per_micro

        def step():  # the same tokens on every rank and in every mode: the same generator
            tokens = rng.integers(0, config.vocab_size, (n, args.seq + 1))
            with CommLedger() as led:
                steps[mode].append(trainings[mode].step(tokens, mask))
            ledgers[mode] = led  # the last step's messages are the ones reported
            return steps[mode][-1]
        return step

    figures = run_trials(mesh.world, {mode: stepper(mode) for mode in modes}, args.trials,
                         warmup=1, figures=lambda out: {key: out[key] for key in TIMED})
    rows = []
    for mode in modes:
        trainings[mode].close()
        entry = pipeline_entry(mesh, schedule, steps[mode], ledgers[mode])  # drops the warm-up
        if mesh.world.Get_rank() == 0:
            rows.append(dict(row_of(entry, figures[mode], args.batch_per_micro, args.seq, config),
                             overlap=mode))
    return rows if mesh.world.Get_rank() == 0 else None


def run(args, comm):
    p = comm.Get_size()
    config = model_config(args, p)
    runs, skipped = cases(args, p)
    rows, modes = [], modes_of(args)
    bar = Progress(comm, len(runs), quiet=args.quiet, unit="case")
    engine = ProgressEngine() if "thread" in modes else None  # one thread for every case
    with Mesh(comm, 1, 1, pp=p) as mesh:
        for name, m, v in runs:
            bar.start("timing pipeline steps", f"{name} m={m}")
            case = measure(args, config, mesh, make_schedule(name, p, m, v), engine)
            rows += case or []
            bar.update(step=format_seconds(case[0]["step_seconds"]) if case else "")
    bar.close()
    if engine is not None:
        engine.close()
    compared = comparison(rows, modes) if comm.Get_rank() == 0 else None
    if comm.Get_rank() == 0:
        print_table(rows, p, config, args.batch_per_micro, args.trials)
        for name, m, why in skipped:
            print(f"  skipped {name} at m = {m}: {why}")
        if len(modes) > 1:
            print_comparison(compared, modes, p, args.trials)
    settings = dict(world_size=p, pp=p, dp=1, tp=1, schedules=args.schedules, overlap=modes,
                    micro_batches=micro_batch_counts(args, p), virtual_stages=args.virtual_stages,
                    batch_per_micro=args.batch_per_micro, seq=args.seq, trials=args.trials,
                    warmup=1, seed=SEED, mpi_library=MPI.Get_library_version().splitlines()[0])
    write_json(comm, args.json, dict(
        benchmark="pp", world_size=p, settings=settings, config=config.to_dict(), rows=rows,
        comparison=compared,
        skipped=[dict(schedule=name, micro_batches=m, reason=why) for name, m, why in skipped]))
    return 0
