"""python -m mpipar.train's options and their checks: every setting validated identically on
every rank before any message is sent (a ValueError naming the option)."""
import argparse
import math

from .cli import Parser
from .collectives.progress import thread_level_problem
from .measure.memory import too_big
from .parallel.buckets import MODES
from .parallel.dp_micro import SYNCS, micro_batches_problem
from .parallel.pipeline_stage import stage_problem
from .parallel.pipeline_train import micro_batch_problem
from .parallel.schedules import SCHEDULE_NAMES, make_schedule
from .parallel.zero import zero_problem
from .tasks.addition import RECIPES, AdditionTask


def build_parser(description):
    p = Parser(prog="python -m mpipar.train", description=description,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(RECIPES), default="default",
                   help="the training recipe (task, model shape, schedule): tiny trains in seconds "
                        "(tests); default reaches >= 99%% (minutes)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and held-out set")
    p.add_argument("--dp", type=int, help="data-parallel ranks (default: all ranks / tp)")
    p.add_argument("--tp", type=int, help="tensor-parallel ranks per replica (default 1)")
    p.add_argument("--sp", action="store_true", help="sequence parallelism in the tensor-parallel "
                   "group (needs --tp; not with --pp): norms, residual adds and the embedding's "
                   "output hold 1/tp of the positions per rank (Korthikanti et al. 2022)")
    p.add_argument("--pp", type=int, help="pipeline stages per replica (default 1: no pipeline)")
    p.add_argument("--micro-batches", type=int, metavar="M", help="micro-batches per replica and "
                   "step in the pipeline (default 2 x pp)")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, help="the pipeline's order of forward "
                   "and backward steps (default 1f1b)")
    p.add_argument("--virtual-stages", type=int, metavar="V", help="model chunks per rank of the "
                   "interleaved schedule (default 2)")
    p.add_argument("--n-layer", type=int, help="transformer blocks (default: the recipe's, at "
                   "least one per pipeline stage)")
    p.add_argument("--show-schedule", action="store_true", help="print the pipeline schedule "
                   "as a table and a timeline chart, with its bubble, and exit")
    p.add_argument("--global-batch", type=int, help="examples per step, all ranks together")
    p.add_argument("--lr", type=float, help="peak learning rate (warm-up, then cosine decay)")
    p.add_argument("--bucket-kb", type=float, default=64,
                   help="gradient bucket size in KiB for the overlapped all-reduce (default 64)")
    p.add_argument("--overlap", choices=MODES, help="gradient all-reduces during backward: "
                   "poll (started as buckets fill, advanced between layers; the default), thread "
                   "(on a communication thread; needs MPI_THREAD_MULTIPLE) or none (after backward). "
                   "With --tp, thread also runs the asynchronous linear: each column-parallel "
                   "layer's input-gradient reduction on a thread of its own while the layer's "
                   "weight gradients are computed (the same bits; mpipar.parallel.tp_async). "
                   "With --pp it is the activations and gradients between stages instead: poll "
                   "(receives posted ahead, sends tested between steps), thread (a communication "
                   "thread waits inside MPI on every message while the stage computes, so large "
                   "messages travel during compute) or none (messages move only in the waits)")
    p.add_argument("--no-overlap", action="store_true", help="the same as --overlap none")
    p.add_argument("--in-flight", type=int, metavar="N", help="buckets' rings in flight at once "
                   "with --overlap thread (default: every complete bucket's; 1: one after another)")
    p.add_argument("--dp-micro-batches", type=int, metavar="M", help="gradient accumulation "
                   "over M micro-batches per data-parallel replica, without --pp (default 1)")
    p.add_argument("--dp-sync", choices=SYNCS, help="with --dp-micro-batches: each (every "
                   "micro-batch's buckets all-reduced while the next computes: M times the "
                   "bytes; the default) or last (summed locally, one all-reduce during the last "
                   "backward: DDP's no_sync)")
    p.add_argument("--deterministic", action="store_true", help="add gradients in fixed rank "
                   "order: the same bits as one process accumulating the same shards")
    p.add_argument("--zero", type=int, default=0, metavar="STAGE", help="ZeRO stage over the "
                   "data-parallel ranks: 1 shards AdamW's moments, 2 the gradients too, 3 the "
                   "parameters too (default 0: every replica holds everything); not with --tp, --pp")
    p.add_argument("--eval-every", type=int, default=500, help="held-out evaluation interval")
    p.add_argument("--json", metavar="PATH", help="rank 0 writes the loss history and settings")
    p.add_argument("--out", metavar="DIR", help="save model.safetensors + config.json here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_timeout()
    return p


def settings_from(args, world):
    """The run's settings, validated identically on every rank (ValueError if impossible)."""
    s = dict(RECIPES[args.preset])
    for key in ("steps", "global_batch", "lr"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    pipeline = any(x is not None for x in (args.pp, args.micro_batches, args.schedule,
                                           args.virtual_stages)) or args.show_schedule
    for name in ("tp", "pp", "dp", "micro_batches", "virtual_stages", "n_layer", "in_flight",
                 "dp_micro_batches"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, not {value}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be a whole number in [0, 2**32), not {args.seed}")
    if args.sp and (args.tp is None or pipeline):
        raise ValueError("--sp needs --tp (it splits the positions over the tensor-parallel ranks)"
                         if args.tp is None else "--sp does not run with --pp: leave one out")
    tp = 1 if args.tp is None else args.tp
    pp = 1 if args.pp is None else args.pp
    dp = args.dp if args.dp is not None else max(1, world // (tp * pp))
    if s["steps"] < 1 or s["global_batch"] < dp:
        raise ValueError("--steps must be >= 1 and --global-batch >= dp")
    if not (math.isfinite(s["lr"]) and 0 < s["lr"] <= 1):
        raise ValueError(f"--lr must be a number in (0, 1], not {s['lr']}")
    if not (math.isfinite(args.bucket_kb) and 0 < args.bucket_kb <= MAX_BUCKET_KB):
        raise ValueError(f"--bucket-kb must be a number in (0, {MAX_BUCKET_KB}] (1 GiB), "
                         f"not {args.bucket_kb}")
    overlap = args.overlap or ("none" if args.no_overlap else "poll")
    if args.no_overlap and overlap != "none":
        raise ValueError(f"--no-overlap contradicts --overlap {overlap}")
    problem = overlap_problem(overlap, args, pipeline, tp, dp)
    if problem:
        raise ValueError(problem)
    if args.eval_every < 1:
        raise ValueError(f"--eval-every must be >= 1 (steps between evaluations), not {args.eval_every}")
    if tp > s["n_head"]:
        raise ValueError(f"--tp {tp}: the model has {s['n_head']} heads, so at most {s['n_head']}")
    problem = zero_problem(args.zero, tp, pipeline)
    if problem:
        raise ValueError(problem)
    dp_m, dp_sync = args.dp_micro_batches or 1, args.dp_sync or "each"
    if (args.dp_micro_batches is not None or args.dp_sync) and (pipeline or args.zero):
        raise ValueError("--dp-micro-batches / --dp-sync: " + (
            "the pipeline has its own --micro-batches" if pipeline else "not with --zero"))
    if args.dp_sync and args.dp_micro_batches is None:
        raise ValueError("--dp-sync needs --dp-micro-batches")
    if args.in_flight is not None and (overlap != "thread" or pipeline):
        raise ValueError("--in-flight: data parallelism's buckets (no --pp) with --overlap thread, "
                         f"not {'--pp' if pipeline else overlap}")
    problem = micro_batches_problem(s["global_batch"], dp, dp_m, dp_sync)
    if problem:
        raise ValueError(f"--dp-micro-batches: {problem}")
    s.update(dp=dp, tp=tp, pp=pp, seed=args.seed, preset=args.preset, overlap=overlap,
             deterministic=args.deterministic, sp=args.sp, bucket_bytes=int(args.bucket_kb * 1024),
             zero=args.zero, pipeline=pipeline, schedule=None, in_flight=args.in_flight,
             dp_micro_batches=dp_m, dp_sync=dp_sync,
             tp_async=overlap == "thread" and tp > 1 and not pipeline)
    if pipeline:
        name = args.schedule or "1f1b"
        v = args.virtual_stages or (2 if name == "interleaved" else 1)
        m = args.micro_batches if args.micro_batches is not None else 2 * pp
        schedule = make_schedule(name, pp, m, v)  # a ValueError naming the option
        s["n_layer"] = args.n_layer or max(s["n_layer"], schedule.n_stages)
        problem = stage_problem(s["n_layer"], schedule.n_stages) or (
            None if args.show_schedule else micro_batch_problem(s["global_batch"], dp, m))
        if problem:
            raise ValueError(problem)
        s.update(schedule=name, micro_batches=m, virtual_stages=v, stages=schedule.n_stages)
    elif args.n_layer is not None:
        s["n_layer"] = args.n_layer
    if s["n_layer"] < 1:
        raise ValueError("--n-layer must be at least 1")
    problem = memory_problem(s, dp)
    if problem:
        raise ValueError(problem)
    return s


MAX_BUCKET_KB = 1 << 20


def overlap_problem(overlap, args, pipeline, tp, dp):
    """Why --overlap cannot run with the other settings, or None. "thread" puts data
    parallelism's buckets on a communication thread and, with --tp, the column-parallel
    layers' input-gradient reductions on another (the asynchronous linear); with --pp the
    messages between stages (the asynchronous linear is then off)."""
    if overlap != "thread":
        return None
    problem = thread_level_problem()
    if problem:
        return f"--overlap thread: {problem}"
    if pipeline:  # the thread carries the pipeline's messages, in any mode
        return None
    if args.deterministic and not (tp > 1 and dp == 1):
        return ("--overlap thread: --deterministic adds the data-parallel gradients in rank order "
                "after backward (with --tp and --dp 1, thread runs the asynchronous linear alone)")
    if args.zero:
        return "--overlap thread: ZeRO polls its reduce-scatters between layers; use --overlap poll or none"
    return None


def memory_problem(s, dp):
    """Why a step of these settings cannot fit this machine's memory, or None. The estimate
    counts what backward keeps per token and layer, about 16 d float32 (the block's inputs,
    the 4d MLP activations and the attention output; an underestimate), and the logits over
    the vocabulary, for the examples of one replica."""
    task = AdditionTask(digits=s["digits"], seed=s["seed"], heldout=s["heldout"])
    per_token = 4 * (16 * s["n_embd"] * s["n_layer"] + 2 * task.vocab_size)
    need = -(-s["global_batch"] // dp) * task.seq_len * per_token
    return too_big(f"--global-batch {s['global_batch']} (dp = {dp})", need, dp)
