"""python -m mpipar.bench forward -- time one forward pass of the tensor-parallel GPT-2.

    mpirun -n 4 python -m mpi4py -m mpipar.bench forward --preset gpt2-small --seq 256

Random weights of the preset's shape (only the shape matters for time), each rank
generating only its own slices (mpipar.models.random_init). After
--warmup forwards, --trials forwards are timed: barrier, forward, the slowest
rank's time (MPI.MAX). A CommLedger splits each into communication (the
row-parallel allreduces and the logit allgather) and compute (the rest).
Reported: the medians.
"""
import argparse

import numpy as np

from ..cli import json_path_problem, write_json
from ..collectives import ALGORITHMS
from ..measure.ledger import CommLedger
from ..measure.memory import peak_rss_bytes, peak_rss_per_rank
from ..measure.units import format_bytes, format_seconds
from ..models import GPT, PRESETS
from ..models.checkpoint import load_model
from .timing import medians, time_call


def add_parser(commands):
    c = commands.add_parser("forward", help="forward-pass time of the tensor-parallel GPT-2",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--preset", choices=list(PRESETS), default="small",
                   help="model shape (default small; gpt2-small is the 124M GPT-2)")
    c.add_argument("--batch", type=int, default=1, metavar="B", help="sequences (default 1)")
    c.add_argument("--seq", type=int, default=64, metavar="T", help="tokens per sequence (default 64)")
    c.add_argument("--algorithm", default="auto", choices=(*ALGORITHMS["allreduce"], "mpi", "auto"),
                   help="allreduce algorithm (default auto)")
    c.add_argument("--deterministic", action="store_true", help="fixed-order reductions")
    c.add_argument("--trials", type=int, default=5, metavar="N", help="timed forwards (default 5)")
    c.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed forwards (default 1)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    config = PRESETS[args.preset]
    if args.trials < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 1:
        return "--trials, --batch and --seq must be at least 1, --warmup at least 0"
    if args.seq > config.n_ctx:
        return f"--seq {args.seq} is longer than the context of {config.n_ctx}"
    if comm.Get_size() > config.n_head:
        return f"{args.preset} has {config.n_head} heads: run on at most {config.n_head} ranks"
    return json_path_problem(comm, args.json)


def run(args, comm):
    at_start = peak_rss_bytes()  # the interpreter, NumPy and MPI
    config, source, _ = load_model(preset=args.preset, seed=0, sliced=True)
    model = GPT(config, source, comm, algorithm=args.algorithm,
                deterministic=args.deterministic)
    built = peak_rss_bytes()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq))
    ledgers = []  # one per forward, the last one's bytes are reported

    def forward():
        with CommLedger() as led:
            model.forward(tokens)
        ledgers.append(led)
        return led

    def communication(led):  # the row-parallel allreduces and the logit gather
        return {"comm_seconds": sum(r["seconds"] for r in led.records)}

    figures = time_call(comm, forward, args.trials, warmup=args.warmup, figures=communication)
    t, c = (medians(figures)[key] for key in ("seconds", "comm_seconds"))
    total, nbytes = figures["seconds"], sum(r["nbytes"] for r in ledgers[-1].records)
    result = {"benchmark": "forward", "world_size": comm.Get_size(), "preset": args.preset,
              "config": config.to_dict(), "batch": args.batch, "seq": args.seq,
              "algorithm": args.algorithm, "deterministic": args.deterministic,
              "trials": args.trials, "seconds": t, "seconds_all": total, "comm_seconds": c,
              "compute_seconds": t - c, "payload_bytes_per_rank": int(nbytes),
              "param_bytes_per_rank": int(model.param_bytes()),
              "param_bytes_all_ranks": comm.allgather(int(model.param_bytes())),
              "peak_rss_per_rank": peak_rss_per_rank(comm),
              # the high-water mark at start, after building the model, after the forwards
              "peak_rss_stages_per_rank": comm.allgather(
                  {"start": at_start, "model_built": built, "forward": peak_rss_bytes()})}
    result["peak_rss_bytes"] = max(result["peak_rss_per_rank"])
    if comm.Get_rank() == 0:
        print(f"{args.preset} forward, B={args.batch} T={args.seq}, {comm.Get_size()} rank(s), "
              f"{args.algorithm}{' deterministic' if args.deterministic else ''}: "
              f"{format_seconds(t)} (median of {args.trials}) = compute {format_seconds(t - c)} "
              f"+ communication {format_seconds(c)}; {format_bytes(nbytes)} reduced or gathered "
              f"per rank", flush=True)
        worst = int(np.argmax(result["peak_rss_per_rank"]))
        st = result["peak_rss_stages_per_rank"][worst]
        print(f"peak memory of the largest rank ({worst}): {format_bytes(st['forward'])} = start "
              f"{format_bytes(st['start'])} + model built {format_bytes(st['model_built'] - st['start'])}"
              f" (its parameters {format_bytes(result['param_bytes_all_ranks'][worst])}) + forward "
              f"{format_bytes(st['forward'] - st['model_built'])}", flush=True)
    write_json(comm, args.json, result)
    return 0
