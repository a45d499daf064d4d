"""python -m mpipar.bench tp-backward -- the asynchronous linear: what reducing each column-parallel
layer's input gradient on a communication thread, while the layer's weight gradients are
computed, saves of a tensor-parallel backward.

    mpirun -n 2 python -m mpi4py -m mpipar.bench tp-backward --preset gpt2-small --seq 128
    mpirun -n 8 --map-by slot:PE=2 --bind-to core python -m mpi4py -m mpipar.bench tp-backward

Forward and backward (the loss's gradients) of a GPT-2 preset with random weights and tokens
(only the shapes matter for time), split over the ranks by tensor parallelism. The two modes
take turns trial by trial, so both see the same background load (barrier, call, the slowest
rank's time):

  off  each column-parallel layer -- c_attn and c_fc of every block, and the LM head --
       reduces its input gradient on the main thread, then computes its weight gradients
  on   the reduction runs on a communication thread (mpipar.parallel.tp_async) while the
       main thread computes the weight gradients, and is waited for afterwards

Reported, medians of --trials: each mode's forward + backward and backward seconds, the
backward time saved in all and per column-parallel layer, the reductions' own seconds and the
main thread's wait for them (off: the same), the part of the reductions hidden (the wait off
minus the wait on) in all and per kind of layer, and whether the two modes' losses and
gradients are the same bits on every rank (they must be). The saving is a difference of two
noisy times; the hidden waits are the steadier figure of what the overlap achieved.

The communication thread spins inside MPI: it needs a core besides its rank's (Open MPI:
--map-by slot:PE=2 --bind-to core, 8 ranks on 16 cores). Where the ranks fill the cores it
competes with the very products it should hide behind, and saves little or nothing.
"""
import argparse
import time

import numpy as np

from ..cli import json_path_problem, write_json
from ..collectives import ALGORITHMS
from ..collectives.progress import ProgressEngine, thread_level, thread_level_problem
from ..measure.memory import too_big
from ..measure.units import format_seconds
from ..models import GPT, PRESETS
from ..models.params import param_count
from ..models.random_init import RandomSource
from .table import Column, format_table
from .timing import medians, run_trials, slowest

MODES = ("off", "on")


def add_parser(commands):
    c = commands.add_parser("tp-backward", help="tensor-parallel backward with and without the "
                            "asynchronous linear (input-gradient reductions on a thread)",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--preset", choices=list(PRESETS), default="gpt2-small",
                   help="GPT-2 shape (default gpt2-small, the 124M model)")
    c.add_argument("--batch", type=int, default=1, metavar="B", help="sequences (default 1)")
    c.add_argument("--seq", type=int, default=128, metavar="T", help="tokens per sequence (default 128)")
    c.add_argument("--algorithm", default="auto", choices=(*ALGORITHMS["allreduce"], "mpi", "auto"),
                   help="allreduce algorithm of every reduction (default auto)")
    c.add_argument("--deterministic", action="store_true", help="fixed-order reductions")
    c.add_argument("--sp", action="store_true", help="sequence parallelism: the input gradients "
                   "are reduce-scattered instead of all-reduced")
    c.add_argument("--trials", type=int, default=5, metavar="N", help="timed rounds (default 5)")
    c.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed rounds (default 1)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    config, p = PRESETS[args.preset], comm.Get_size()
    if args.trials < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 1:
        return "--trials, --batch and --seq must be at least 1, --warmup at least 0"
    if args.seq > config.n_ctx:
        return f"--seq {args.seq} is longer than the context of {config.n_ctx}"
    if p > config.n_head:
        return f"{args.preset} has {config.n_head} heads: run on at most {config.n_head} ranks"
    if p > 1 and thread_level_problem():
        return thread_level_problem()
    # what backward keeps (~16 d per token and layer, the logits' slice), the parameters and
    # the two modes' gradients kept for the comparison
    per_token = 4 * (2 * config.vocab_size / p + 16 * config.n_embd * config.n_layer)
    need = int(args.batch * args.seq * per_token) + 3 * 4 * param_count(config) // p
    return (too_big(f"--batch {args.batch} x --seq {args.seq}", need, p)
            or json_path_problem(comm, args.json))


def stamp_backward(model):
    """Make ``model`` note when its backward starts (the LM head's backward, the first step):
    returns a dict whose "t" is that perf_counter() time after each loss_and_grads."""
    clock, head_backward = {"t": None}, model.head_backward

    def stamped(head, grads):
        clock["t"] = time.perf_counter()
        return head_backward(head, grads)
    model.head_backward = stamped
    return clock


def same_bits(a, b):
    """Whether two (loss, losses, grads) results are equal bit for bit."""
    return bool(a[0] == b[0] and np.array_equal(a[1], b[1]) and all(
        ga.keys() == gb.keys() and all(np.array_equal(ga[n], gb[n]) for n in ga)
        for ga, gb in zip(a[2], b[2])))


def run(args, comm):
    config, p = PRESETS[args.preset], comm.Get_size()
    model = GPT(config, RandomSource(config, seed=0), comm, algorithm=args.algorithm,
                deterministic=args.deterministic, sequence_parallel=args.sp)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq + 1))
    weights = np.full((args.batch, args.seq), 1 / tokens[:, 1:].size, model.dtype)
    engine = ProgressEngine() if p > 1 else None
    clock, last, layers = stamp_backward(model), {}, {mode: [] for mode in MODES}

    def step(mode):
        def call():
            model.tp.engine, model.tp.timings = (engine if mode == "on" else None), []
            last[mode] = model.loss_and_grads(tokens[:, :-1], tokens[:, 1:], weights)
            end, timings = time.perf_counter(), model.tp.timings
            layers[mode].append(timings)
            return dict(backward_seconds=end - clock["t"],
                        reduction_seconds=sum(t["seconds"] for t in timings),
                        wait_seconds=sum(t["waited"] for t in timings))
        return call

    figures = run_trials(comm, {mode: step(mode) for mode in MODES}, args.trials, args.warmup,
                         figures=lambda figs: figs)
    model.tp.engine = model.tp.timings = None
    if engine is not None:
        engine.close()
    bitwise = all(comm.allgather(same_bits(last["off"], last["on"])))
    med = {mode: medians(figures[mode]) for mode in MODES}
    names = [t["what"] for t in layers["on"][-1]]
    saved = med["off"]["backward_seconds"] - med["on"]["backward_seconds"]
    hidden = med["off"]["wait_seconds"] - med["on"]["wait_seconds"]
    result = dict(
        benchmark="tp-backward", world_size=p, preset=args.preset, config=config.to_dict(),
        batch=args.batch, seq=args.seq, algorithm=args.algorithm, deterministic=args.deterministic,
        sequence_parallel=args.sp, trials=args.trials, thread_level=thread_level(),
        column_layers=names, modes=med, trials_all=figures, saved_seconds=saved,
        saved_per_layer_seconds=saved / len(names), saved_fraction=saved / med["off"]["backward_seconds"],
        hidden_seconds=hidden, hidden_per_layer_seconds=hidden / len(names),
        by_kind=by_kind(comm, layers, args.warmup), bits_equal=bitwise)
    if comm.Get_rank() == 0:
        print_report(result)
    write_json(comm, args.json, result)
    return 0


def by_kind(comm, layers, warmup):
    """Per kind of column-parallel layer (c_attn, c_fc, lm_head): how many, and per layer the
    median over the timed trials of its reduction's seconds and of the main thread's wait, in
    each mode -- the slowest rank's -- and the part hidden (the wait off minus the wait on)."""
    figures = {}
    for mode, trials in layers.items():
        for timings in trials[warmup:]:
            for t in timings:
                kind = t["what"].rsplit(".", 1)[-1]
                for key in ("seconds", "waited"):
                    figures.setdefault(f"{kind} {mode} {key}", {}).setdefault(t["what"], []).append(t[key])
    # per layer the median over trials, then the mean over the layers of a kind
    flat = slowest(comm, {k: float(np.mean([np.median(v) for v in per.values()]))
                          for k, per in sorted(figures.items())})
    out = {}
    for kind in dict.fromkeys(k.split()[0] for k in flat):
        out[kind] = dict(layers=len(figures[f"{kind} on seconds"]),
                         **{f"{key}_{mode}": flat[f"{kind} {mode} {key}"]
                            for mode in MODES for key in ("seconds", "waited")})
        out[kind]["hidden"] = out[kind]["waited_off"] - out[kind]["waited_on"]
    return out


def print_report(r):
    print(f"{r['preset']}: {r['world_size']} rank(s), batch {r['batch']} x {r['seq']} tokens, "
          f"algorithm {r['algorithm']}{', deterministic' if r['deterministic'] else ''}"
          f"{', sequence-parallel' if r['sequence_parallel'] else ''}; {len(r['column_layers'])} "
          f"column-parallel layers; MPI_THREAD_{r['thread_level'].upper()}")
    columns = [Column("async linear", align="<"), Column("fwd + bwd", format_seconds),
               Column("backward", format_seconds), Column("reductions", format_seconds),
               Column("main thread waited", format_seconds)]
    rows = [[mode, m["seconds"], m["backward_seconds"], m["reduction_seconds"], m["wait_seconds"]]
            for mode, m in r["modes"].items()]
    print(format_table(columns, rows, indent="  "))
    print(f"  saved {format_seconds(r['saved_seconds'])} of backward ({100 * r['saved_fraction']:.1f}%), "
          f"{format_seconds(r['saved_per_layer_seconds'])} per column-parallel layer; "
          f"the same bits on and off: {'yes' if r['bits_equal'] else 'NO'}")
    print(f"  hidden by the overlap (the main thread's wait off minus on): "
          f"{format_seconds(r['hidden_seconds'])}, {format_seconds(r['hidden_per_layer_seconds'])} "
          "per layer; the rest of the backward's difference is the thread's cost or noise")
    columns = [Column("layer", align="<"), Column("count"), Column("reduction off", format_seconds),
               Column("reduction on", format_seconds), Column("wait on", format_seconds),
               Column("hidden", format_seconds)]
    rows = [[kind, k["layers"], k["seconds_off"], k["seconds_on"], k["waited_on"], k["hidden"]]
            for kind, k in r["by_kind"].items()]
    print(format_table(columns, rows, indent="  "))
    print(f"  (medians of {r['trials']} trials, the slowest rank's; per layer of each kind; hidden: "
          "the main thread's wait off minus on)", flush=True)
