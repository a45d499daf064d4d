"""python -m mpipar.bench forward -- the tensor-parallel model's forward (and decoding) beside its BLAS floor.

    mpirun -n 4 python -m mpi4py -m mpipar.bench forward --preset gpt2-small --seq 256
    python -m mpipar.bench forward --preset gpt2-small --seq 256 --profile --decode 32
    python -m mpipar.bench forward --preset smollm2-shape --compare-torch

Random weights of the preset's shape (only the shape matters for time), each rank
generating only its own slices (mpipar.models.random_init): GPT-2's presets, or the
Llama family's (smollm2-shape: SmolLM2-135M's; llama-tiny). After --warmup rounds,
--trials rounds each time a forward and the BLAS floor, alternately: barrier, call,
the slowest rank's time (MPI.MAX). A CommLedger splits each forward into
communication (the row-parallel allreduces, the embedding's allreduce and, with --logits
gathered, the logit allgather) and compute. --logits sharded (the default) stops at each
rank's vocab/p slice of the logits, as training's vocab-parallel loss and the distributed
greedy argmax use them; --logits gathered assembles all (B, T, vocab) of them on every rank
(model.forward) -- at gpt2-small, T = 256 that is 51 MB, received by every rank.

The BLAS floor is the forward's matrix products alone -- recorded in one forward,
replayed back to back at the same shapes, strides and thread count, on the real
weights (mpipar.bench.floor) -- and the ratio forward / floor how much time goes
elsewhere. --profile adds a table of time per kind of operation (matrix products,
attention softmax and mask, norms, activations, embedding and logits, rotary,
communication, the rest) of the median of --trials profiled forwards, from the
explicit hooks of mpipar.measure.op_profile (off, and free, otherwise).
--decode N: N greedy tokens after the --seq prompt with the KV cache, per token, beside
their GEMV floor and the memory bandwidth those matrix-vector products reach
(mpipar.bench.forward_decode). --compare-torch: Hugging Face's GPT2LMHeadModel (or
LlamaForCausalLM) on the same weights and tokens, on rank 0: its time and the largest
logit difference (needs torch and transformers). --vs-serial (on 2 or more ranks): rank 0
also builds the whole model on its own and times its forward and its floor, alone, in the same
rounds -- the speedup over one rank, beside the products' own (the serial floor / the p-rank floor: per
core the products themselves slow down when all cores run, on a shared memory system and
clock) measured side by side, not across runs. Reported: the medians.
"""
import argparse

import numpy as np

from ..cli import json_path_problem, write_json
from ..collectives import ALGORITHMS
from ..collectives.channel import quiet_wait
from ..measure.ledger import CommLedger
from ..measure.memory import peak_rss_bytes, peak_rss_per_rank, too_big
from ..measure.op_profile import OpProfile, model_arrays
from ..models import GPT, PRESETS, Llama, LlamaConfig
from ..models.params import param_count
from ..models.random_init import RandomSource, random_params
from . import forward_decode, forward_report, forward_torch
from .floor import Replay
from .timing import medians, run_trials

#: the shapes the benchmark runs: GPT-2's presets, and the Llama family's
SHAPES = {**PRESETS,
          "llama-tiny": LlamaConfig(vocab_size=256, n_ctx=128, n_embd=64, n_head=4, n_kv_head=2,
                                    n_layer=2, n_inner=96),
          "smollm2-shape": LlamaConfig()}  # SmolLM2-135M's shape (LlamaConfig's defaults)


def add_parser(commands):
    c = commands.add_parser("forward", help="forward-pass and decoding time of the tensor-parallel "
                            "model, beside the BLAS floor", description=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--preset", choices=list(SHAPES), default="small",
                   help="model shape (default small; gpt2-small is the 124M GPT-2, smollm2-shape "
                   "a Llama of SmolLM2-135M's shape)")
    c.add_argument("--batch", type=int, default=1, metavar="B", help="sequences (default 1)")
    c.add_argument("--seq", type=int, default=64, metavar="T", help="tokens per sequence (default 64)")
    c.add_argument("--algorithm", default="auto", choices=(*ALGORITHMS["allreduce"], "mpi", "auto"),
                   help="allreduce algorithm (default auto)")
    c.add_argument("--deterministic", action="store_true", help="fixed-order reductions")
    c.add_argument("--logits", choices=("sharded", "gathered"), default="sharded",
                   help="sharded (default): each rank keeps its vocab/p slice of the logits, as the "
                   "loss and greedy decoding use them; gathered: the full logits on every rank")
    c.add_argument("--sp", action="store_true", help="sequence parallelism: norms and residual "
                   "stream 1/p of the positions per rank, reduce-scatters and allgathers for the "
                   "allreduces (not with --decode: one position per step, nothing to split)")
    c.add_argument("--trials", type=int, default=5, metavar="N", help="timed rounds (default 5)")
    c.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed rounds (default 1)")
    c.add_argument("--profile", action="store_true",
                   help="time per kind of operation (matmul, softmax, norms, ...), printed and in JSON")
    c.add_argument("--decode", type=int, default=0, metavar="N",
                   help="also time N greedy tokens after the --seq prompt with the KV cache: per "
                   "token, its GEMV floor and their memory bandwidth (default 0: no decoding)")
    c.add_argument("--compare-torch", action="store_true",
                   help="also run Hugging Face's model on the same weights (rank 0): time, max logit "
                   "difference (needs torch and transformers)")
    c.add_argument("--vs-serial", action="store_true",
                   help="rank 0 also times the whole model alone in the same rounds: the speedup "
                   "and the products' own speedup, measured side by side (2 or more ranks)")
    c.add_argument("--json", metavar="PATH", help="rank 0 writes the result here")
    c.set_defaults(check=check, run=run, parser=c)


def check(args, comm):
    config = SHAPES[args.preset]
    if args.trials < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 1 or args.decode < 0:
        return "--trials, --batch and --seq must be at least 1, --warmup and --decode at least 0"
    if args.seq + args.decode > config.n_ctx:
        return f"--seq {args.seq} + --decode {args.decode} is longer than the context of {config.n_ctx}"
    if comm.Get_size() > config.n_head:
        return f"{args.preset} has {config.n_head} heads: run on at most {config.n_head} ranks"
    if args.sp and args.decode:
        return "--sp with --decode: a decoding step computes one position, nothing to split; leave one out"
    if args.compare_torch and not forward_torch.available():
        return forward_torch.MISSING
    if args.vs_serial and comm.Get_size() < 2:
        return "--vs-serial compares p ranks with one: run it on 2 or more ranks"
    # the logits (vocabulary / p per rank, plus the gathered copy) and ~16 d per token and layer
    p = comm.Get_size()
    per_token = 4 * (2 * config.vocab_size + 16 * config.n_embd * config.n_layer / p)
    need = int(args.batch * (args.seq + args.decode) * per_token)
    if args.vs_serial:  # rank 0's whole model and its activations, counted on every rank
        need += 2 * 4 * param_count(config) // p + int(args.batch * args.seq * per_token * p)
    return (too_big(f"--batch {args.batch} x --seq {args.seq}", need, p)
            or json_path_problem(comm, args.json))


def build(args, comm):
    """The model of ``args.preset`` over ``comm``, each rank drawing only its own slices."""
    config = SHAPES[args.preset]
    family = Llama if isinstance(config, LlamaConfig) else GPT
    return family(config, RandomSource(config, seed=0), comm, algorithm=args.algorithm,
                  deterministic=args.deterministic, sequence_parallel=args.sp)


def comm_seconds(led):
    """Seconds of the row-parallel allreduces and the logit gather in one ledger."""
    return sum(r["seconds"] for r in led.records)


def seconds_by_op(led):
    """{op: seconds} of one ledger: the allreduces apart from the logits' allgather."""
    out = {}
    for r in led.records:
        out[r["op"]] = out.get(r["op"], 0.0) + r["seconds"]
    return out


def run(args, comm):
    at_start = peak_rss_bytes()  # the interpreter, NumPy and MPI
    model = build(args, comm)
    config = model.config
    built = peak_rss_bytes()
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq))
    ledgers = []  # one per forward, the last one's bytes are reported

    recording = OpProfile(persistent=model_arrays(model))  # the products of one forward
    with recording:
        logits = model.forward(tokens)
    replay = Replay(recording.products)
    del recording
    if not args.compare_torch:  # only PyTorch's comparison needs them
        logits = None

    def forward():
        with CommLedger() as led:
            one_forward(model, tokens, args.logits)
        ledgers.append(led)
        return {"comm_seconds": comm_seconds(led)}

    def products_alone():
        replay()
        return {}

    calls = {"forward": forward, "floor": products_alone}
    if args.vs_serial:
        more, serial_flops, whole = serial_calls(args, comm, tokens)
        calls.update(more)
    figures = run_trials(comm, calls, args.trials, args.warmup, figures=lambda figs: figs)
    t, c = (medians(figures["forward"])[key] for key in ("seconds", "comm_seconds"))
    floor = medians(figures["floor"])["seconds"]
    nbytes = sum(r["nbytes"] for r in ledgers[-1].records)
    by_op = comm.allgather(seconds_by_op(ledgers[-1]))  # the last forward's, per rank
    result = {"benchmark": "forward", "world_size": comm.Get_size(), "preset": args.preset,
              "family": type(model).__name__, "config": config.to_dict(), "batch": args.batch,
              "seq": args.seq, "logits": args.logits, "algorithm": args.algorithm,
              "deterministic": args.deterministic,
              "trials": args.trials, "seconds": t, "seconds_all": figures["forward"]["seconds"],
              "comm_seconds": c, "compute_seconds": t - c, "comm_seconds_by_op_per_rank": by_op,
              "blas_floor_seconds": floor, "blas_floor_seconds_all": figures["floor"]["seconds"],
              "ratio_to_floor": t / floor, "floor_products_per_rank": len(replay.pairs),
              "floor_flops_per_rank": replay.flops, "floor_flops_all_ranks": comm.allgather(replay.flops),
              "payload_bytes_per_rank": int(nbytes), "sequence_parallel": args.sp,
              "bytes_sent_per_rank": comm.allgather(sum(r["bytes_sent"] or 0 for r in ledgers[-1].records)),
              "param_bytes_per_rank": int(model.param_bytes()),
              "param_bytes_all_ranks": comm.allgather(int(model.param_bytes()))}
    if args.vs_serial:
        serial, serial_floor = (medians(figures[k])["seconds"] for k in ("serial", "serial_floor"))
        result.update(serial_seconds=serial, serial_seconds_all=figures["serial"]["seconds"],
                      serial_floor_seconds=serial_floor, speedup=serial / t,
                      floor_speedup=serial_floor / floor, serial_ratio_to_floor=serial / serial_floor,
                      speedup_ceiling=serial / floor,
                      serial_floor_flops=serial_flops)
    if args.profile:
        result["profile_per_rank"] = comm.allgather(
            profile_forward(model, tokens, args.trials, args.logits))
        result["balance"] = forward_report.balance(result["profile_per_rank"],
                                                   result["floor_flops_all_ranks"])
    if args.decode:
        result["decode"] = forward_decode.measure_decode(comm, model, tokens, args.decode, args.trials,
                                                         args.warmup, args.profile)
        if args.vs_serial:  # rank 0 alone next, the others asleep: the same run, back to back
            result["serial_decode"] = serial_decode(comm, whole, tokens, args)
            alone = result["decode"]["serial_seconds_per_token"] = \
                result["serial_decode"]["seconds_per_token"]
            result["decode"]["speedup"] = alone / result["decode"]["seconds_per_token"]
            result["decode"]["speedup_ceiling"] = alone / result["decode"]["gemv_floor_seconds_per_token"]
    result["peak_rss_per_rank"] = peak_rss_per_rank(comm)
    # the high-water mark at start, after building the model, after the forwards
    result["peak_rss_stages_per_rank"] = comm.allgather(
        {"start": at_start, "model_built": built, "forward": peak_rss_bytes()})
    result["peak_rss_bytes"] = max(result["peak_rss_per_rank"])
    if args.compare_torch:
        result["torch"] = torch_on_rank0(comm, args, config, tokens, logits)
        result["ratio_to_torch"] = t / result["torch"]["torch_seconds"]
    if comm.Get_rank() == 0:
        forward_report.show(args, result)
    write_json(comm, args.json, result)
    return 0


def serial_calls(args, comm, tokens):
    """({"serial", "serial_floor"}, the floor's flops): rank 0's whole model (the same weights)
    and its products alone, timed on rank 0 while the other ranks wait asleep."""
    from mpi4py import MPI
    whole = build(args, MPI.COMM_SELF) if comm.Get_rank() == 0 else None
    replay = None
    if whole is not None:
        with OpProfile(persistent=model_arrays(whole)) as recording:
            one_forward(whole, tokens, args.logits)
        replay = Replay(recording.products)
    flops = comm.bcast(replay.flops if replay else None, root=0)

    def serial():
        if whole is not None:
            one_forward(whole, tokens, args.logits)
        return {}

    def serial_floor():
        if replay is not None:
            replay()
        return {}
    return {"serial": serial, "serial_floor": serial_floor}, flops, whole


def serial_decode(comm, whole, tokens, args):
    """forward_decode.measure_decode of rank 0's whole model, alone; its figures on every rank."""
    from mpi4py import MPI
    out = None
    if whole is not None:
        out = forward_decode.measure_decode(MPI.COMM_SELF, whole, tokens, args.decode, args.trials,
                                            args.warmup)
    quiet_wait(comm.Ibarrier())
    return comm.bcast(out, root=0)


def one_forward(model, tokens, logits):
    """The forward as ``--logits`` asks: every rank's slice of the logits, or all of them."""
    if logits == "gathered":
        return model.forward(tokens)
    return model.logit_parts(model.final_hidden(tokens))


def profile_forward(model, tokens, trials, logits):
    """This rank's profile table (seconds per kind, and calls) of the median of ``trials``
    profiled forwards -- the median by total time, so that its kinds add up to its total."""
    tables = []
    for _ in range(trials):
        model.tp.comm.Barrier()
        with CommLedger() as led, OpProfile() as prof:
            one_forward(model, tokens, logits)
        tables.append({"total": prof.wall_seconds, **prof.table(prof.wall_seconds, comm_seconds(led)),
                       "calls": dict(prof.calls)})
    return sorted(tables, key=lambda t: t["total"])[len(tables) // 2]


def torch_on_rank0(comm, args, config, tokens, logits):
    """forward_torch.compare on rank 0 (the full weights drawn there alone); the others
    wait asleep. Rank 0's figures, on every rank."""
    out = None
    if comm.Get_rank() == 0:
        params = random_params(config, seed=0)  # the same bits as the model's shards
        out = forward_torch.compare(config, params, tokens, logits, args.trials, args.warmup)
        del params
    quiet_wait(comm.Ibarrier())
    return comm.bcast(out, root=0)

