"""python -m mpipar.bench memory -- memory per rank and step time of DP, ZeRO-1/2/3, TP and SP.

    mpirun -n 4 python -m mpi4py -m mpipar.bench memory --preset small --batch 16

One training step of a GPT preset (random weights and tokens) in each configuration at
this world size: dp (every rank a replica), zero1, zero2, zero3 (mpipar.parallel.zero)
and tp (one replica split over every rank, where the heads allow; tp-sp with sequence
parallelism). Per configuration: memory per rank predicted (16 Psi for DP, ZeRO's sharded
terms: zero_layout) beside what the trainer counts it holds, the activations the forward
saved for backward (gpt2.activation_bytes), the receive buffers the collectives keep
(mpipar.collectives.scratch, released before each configuration), the peak RSS, the
bytes each rank sent in one step (from the ledger) beside the exact prediction and the
paper's volume, and the median step time.

The peak RSS is the process's maximum so far (getrusage): the configurations run from
the one expected to need least (zero3) to the most (dp), so each one's peak is its own
or an earlier one's; run one configuration per job (--configs dp) for clean figures.
"""
import argparse
import gc

from mpi4py import MPI

from ..cli import comma_list, json_path_problem, write_json
from ..collectives import scratch
from ..measure.ledger import CommLedger
from ..measure.memory import peak_rss_bytes, too_big
from ..measure.units import format_bytes, format_seconds
from ..models import GPT, PRESETS, init_params
from ..models.optim import AdamW
from ..models.params import param_count
from ..parallel.data_parallel import DataParallel
from ..parallel.zero import Zero
from ..parallel.zero_report import memory_entry
from .dp import trainer_step
from .table import Column, format_table
from .timing import medians, time_call

CONFIGS = ("zero3", "tp-sp", "tp", "zero2", "zero1", "dp")  #: the order they run in: least memory first


def add_parser(commands):
    c = commands.add_parser("memory", help="memory per rank and step time of DP, ZeRO-1/2/3, TP, SP",
                            description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--preset", choices=list(PRESETS), default="small", help="model (default small)")
    c.add_argument("--batch", type=int, default=16, help="global batch (default 16)")
    c.add_argument("--seq", type=int, default=32, help="tokens per sequence (default 32)")
    c.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    c.add_argument("--configs", type=comma_list, default=list(CONFIGS),
                   help=f"which of {', '.join(CONFIGS)} (default all)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        return f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}"
    if args.batch < comm.Get_size() or args.steps < 1 or args.seq < 2:
        return "--batch must be >= the number of ranks, --steps >= 1, --seq >= 2"
    config = PRESETS[args.preset]
    if args.seq + 1 > config.n_ctx:
        return f"--seq {args.seq} does not fit the context of {config.n_ctx}"
    per_token = 4 * (16 * config.n_embd * config.n_layer + 2 * config.vocab_size)
    need = -(-args.batch // comm.Get_size()) * args.seq * per_token + 16 * 4 * param_count(config)
    return (too_big(f"--preset {args.preset}, --batch {args.batch} x --seq {args.seq}", need,
                    comm.Get_size()) or json_path_problem(comm, args.json))


def build(name, config, comm):
    """The trainer of configuration ``name`` on ``comm``, or None where it cannot run."""
    if name in ("tp", "tp-sp"):
        if comm.Get_size() > config.n_head:
            return None
        model = GPT(config, init_params(config, 0), comm, algorithm="ring",
                    sequence_parallel=name == "tp-sp")
        return DataParallel(model, MPI.COMM_SELF, AdamW(model, lr=1e-4))
    model = GPT(config, init_params(config, 0), MPI.COMM_SELF)
    if name == "dp":
        return DataParallel(model, comm, AdamW(model, lr=1e-4), bucket_bytes=512 << 10)
    return Zero(model, comm, AdamW(model, lr=1e-4), stage=int(name[-1]))


def run(args, comm):
    config, rows = PRESETS[args.preset], []
    baseline = comm.allgather(peak_rss_bytes())
    for name in [c for c in CONFIGS if c in args.configs]:
        for c in (comm, MPI.COMM_SELF):  # each configuration counts its own kept buffers
            scratch.release(c)
        trainer = build(name, config, comm)
        if trainer is None:
            rows.append(dict(config=name, skipped=f"{config.n_head} heads cannot be split over "
                                                  f"{comm.Get_size()} ranks"))
            continue
        outputs = []
        step = trainer_step(trainer, config, args, outputs)
        with CommLedger() as led:
            step()
        entry = memory_entry(trainer, comm, led)
        saved = trainer.model.activation_bytes
        activations = max(comm.allgather(saved["replicated"] + saved["sharded"]))
        figures = time_call(comm, step, args.steps, figures=lambda out: {"seconds": out["seconds"]})
        peaks = comm.allgather(peak_rss_bytes())  # after the timed steps too
        kept = comm.allgather(scratch.held_bytes(comm) + scratch.held_bytes(MPI.COMM_SELF))
        entry["ranks"] = [dict(r, peak_rss=p, scratch=k) for r, p, k in zip(entry["ranks"], peaks, kept)]
        rows.append(dict(config=name, step_seconds=medians(figures)["seconds"],
                         activation_bytes=activations, **entry))
        del trainer, step, outputs
        gc.collect()
    if comm.Get_rank() == 0:
        print(f"{args.preset} ({param_count(config)} parameters): {comm.Get_size()} rank(s), global batch "
              f"{args.batch} x {args.seq} tokens; largest rank of each")
        print(format_table(*table(rows, max(baseline)), indent="  "))
        for row in rows:
            if "skipped" in row:
                print(f"  {row['config']} skipped: {row['skipped']}")
        print(flush=True)
    write_json(comm, args.json, dict(
        benchmark="memory", world_size=comm.Get_size(), preset=args.preset, batch=args.batch,
        seq=args.seq, steps=args.steps, rss_baseline=baseline, configs=rows))
    return 0


def table(rows, baseline):
    """(columns, rows) of the readable table: one row per configuration."""
    columns = [Column("config", align="<"), Column("predicted", format_bytes),
               Column("held", format_bytes), Column("activations", format_bytes),
               Column("scratch", format_bytes), Column("peak RSS", format_bytes),
               Column("RSS - start", format_bytes), Column("sent/step", format_bytes),
               Column("predicted", format_bytes), Column("paper", format_bytes),
               Column("step", format_seconds)]
    out = []
    for row in (r for r in rows if "skipped" not in r):
        ranks = row["ranks"]
        sent = [sum(r["sent"].values()) for r in ranks]
        predicted = [sum(r["sent_predicted"].values()) for r in ranks if r["sent_predicted"]]
        rss = max(r["peak_rss"] for r in ranks)
        out.append([row["config"], max(r["predicted"]["total"] for r in ranks),
                    max(r["held"]["total"] for r in ranks), row["activation_bytes"],
                    max(r["scratch"] for r in ranks), rss,
                    rss - baseline, max(sent),
                    max(predicted) if predicted else None,
                    None if row["config"].startswith("tp") else row["paper_bytes_per_rank"],
                    row["step_seconds"]])
    return columns, out
