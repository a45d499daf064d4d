"""python -m mpipar.demo -- a GPT-2 split over MPI ranks, next to the same model on one.

    mpirun -n 4 python -m mpi4py -m mpipar.demo [--preset small] [--deterministic] [--json out.json]

The model's attention heads, MLP columns and vocabulary rows are divided over
the ranks (Megatron-style tensor parallelism). Rank 0 shows how it is sharded,
the tokens generated greedily by the parallel model and by the serial one (the
same code on one process), how close their logits are (bitwise? largest ULP
distance, error in units of u * sum|x|, per layer), whether every rank holds the
same bits, every message that crossed between ranks with the alpha-beta model's
prediction, and compute versus communication time.

--deterministic reduces partial sums in fixed rank order and compares with a
serial run that reproduces the same blocking: the logits are then bitwise equal.
"""
import argparse
import time

from mpi4py import MPI
import numpy as np

from .cli import Parser, json_path_problem, print0, run_main, write_json
from .collectives import ALGORITHMS
from .collectives.channel import quiet_wait
from .collectives.lowp import ROUNDINGS, WIRE
from .measure import numerics
from .measure.cost_model import CostModel
from .measure.ledger import CommLedger
from .measure.memory import peak_rss_per_rank
from .measure.units import format_bytes
from .models import GPT, PRESETS
from .models.checkpoint import load_model
from .tasks.addition import task_accuracy


def build_parser():
    parser = Parser(prog="python -m mpipar.demo", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="random weights of this shape instead of the shipped addition "
                             "model: tiny (2 layers, d=48), small (4 layers, d=192), "
                             "gpt2-small (the 124M GPT-2 shape)")
    parser.add_argument("--weights", metavar="PATH", help="a GPT-2 model.safetensors; its shape "
                        "comes from the Hugging Face config.json in the same folder (default: "
                        "the addition model shipped with mpipar, trained by python -m mpipar.train)")
    parser.add_argument("--algorithm", default="auto", choices=(*ALGORITHMS["allreduce"], "mpi", "auto"),
                        help="allreduce algorithm of the row-parallel reductions (default auto)")
    parser.add_argument("--comm-dtype", default="float32", choices=list(WIRE),
                        help="wire type of every reduction and logit gather (default float32); "
                             "16-bit types halve the bytes and add rounding")
    parser.add_argument("--rounding", default="per_hop", choices=ROUNDINGS,
                        help="with a 16-bit wire: round every message (per_hop) or reduce in "
                             "float32 and round each finished block once (once, ring only)")
    parser.add_argument("--deterministic", action="store_true", help="reduce in fixed rank "
                        "order; compare with a serial run that uses the same blocking")
    parser.add_argument("--tokens", type=int, metavar="N",
                        help="new tokens to generate greedily (default 16; the addition model: "
                             "the digits of the answer)")
    parser.add_argument("--prompt-length", type=int, default=8, metavar="T",
                        help="tokens in the (random) prompt (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    parser.add_argument("--json", metavar="PATH", help="rank 0 writes the results as JSON here")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tokens is not None and args.tokens < 0) or args.prompt_length < 1:
        parser.error("--tokens must be >= 0 and --prompt-length >= 1")
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    problem = json_path_problem(comm, args.json)
    if problem:
        parser.error(problem)
    config, params, task = load_model(args.preset, args.weights, args.seed)
    algorithm = args.algorithm
    if args.comm_dtype != "float32" and algorithm == "auto":
        algorithm = "ring"  # the 16-bit wires exist for ring and recursive doubling
    model = GPT(config, params, comm, algorithm=algorithm, deterministic=args.deterministic,
                comm_dtype=args.comm_dtype, rounding=args.rounding)
    if task is not None:  # a few held-out sums, side by side
        args.tokens = task.answer_len if args.tokens is None else args.tokens
        prompt = task.prompts(task.heldout_pairs()[:4])
    else:
        args.tokens = 16 if args.tokens is None else args.tokens
        prompt = np.random.default_rng(args.seed).integers(0, config.vocab_size,
                                                           (1, args.prompt_length))
    model.check_tokens(prompt, extra=args.tokens)
    what = (f"random weights, preset {args.preset}" if args.preset else
            f"weights {args.weights}" if args.weights else
            f"the shipped model trained on {task.digits}-digit addition")
    print0(comm, f"mpipar demo: GPT-2 ({config.n_layer} layers, d={config.n_embd}, "
                 f"{config.n_head} heads, vocab {config.vocab_size}) split over {p} rank(s); {what}")
    sharding = comm.gather(dict(rank=rank, heads=_range(model.shards[0]["heads"]),
                                mlp_columns=_range(model.shards[0]["hidden"]),
                                vocab_rows=_range(model.shards[0]["vocab"]),
                                param_bytes=model.param_bytes()), root=0)
    serial_bytes = sum(v.nbytes for v in params.values())
    del params  # each rank keeps only its shards from here on

    comm.Barrier()
    with CommLedger(cost_model=CostModel.calibrate(comm)) as led:
        t0 = time.perf_counter()
        hidden = []
        logits = model.forward(prompt, hidden=hidden)
        generated = model.generate(prompt, args.tokens)
        total = time.perf_counter() - t0
    comm_s = sum(r["seconds"] for r in led.records)
    agree = numerics.ranks_agree(comm, logits) and numerics.ranks_agree(comm, generated)
    argmax_bytes = _argmax_bytes(comm, model, prompt)
    extra = _default_mode_cost(comm, model, prompt) if args.deterministic else None
    accuracy = task_accuracy(model, task) if task is not None else None
    seconds = {"total": comm.allreduce(total, op=MPI.MAX), "comm": comm.allreduce(comm_s, op=MPI.MAX)}
    seconds["compute"] = seconds["total"] - seconds["comm"]
    rss = peak_rss_per_rank(comm)  # before rank 0 builds the serial model for the comparison

    report = None
    if rank == 0:
        report, serial = _serial_comparison(args, p, prompt, logits, hidden, generated)
        if task is not None:
            report["task"] = dict(name="addition", digits=task.digits, n=len(task.heldout_pairs()),
                                  accuracy_parallel=accuracy,
                                  accuracy_serial=task_accuracy(serial, task),
                                  examples=_side_by_side(task, prompt, report))
    quiet_wait(comm.Ibarrier())  # the other ranks sleep while rank 0 runs the serial model
    if rank != 0:
        return 0
    report.update(world_size=p, config=config.to_dict(), ranks_agree=agree, seconds=seconds,
                  deterministic=args.deterministic, algorithm=algorithm,
                  comm_dtype=args.comm_dtype, rounding=args.rounding,
                  sharding=sharding, serial_param_bytes=serial_bytes,
                  peak_rss_bytes=max(rss), peak_rss_per_rank=rss,
                  argmax_bytes=argmax_bytes, deterministic_cost=extra,
                  comm={"summary": {f"{op}/{alg}": g for (op, alg), g in led.totals().items()},
                        **led.to_dict()})
    print_report(report, led)
    if write_json(comm, args.json, report, default=_jsonable):
        print(f"\nwrote {args.json}")
    return 0


def _side_by_side(task, prompt, report):
    """[(sum, parallel answer, serial answer, correct answer)] as text."""
    pairs = task.heldout_pairs()[:len(prompt)]
    par = task.answers_from_generated(np.array(report["all_tokens_parallel"]))
    ser = task.answers_from_generated(np.array(report["all_tokens_serial"]))
    return [(f"{a}+{b}", int(x), int(y), int(a + b)) for (a, b), x, y in zip(pairs, par, ser)]


def _span(first_stop):
    """[3, 6] -> '3-5': the first and last index of a range."""
    return f"{first_stop[0]}-{first_stop[1] - 1}"


def _range(s):
    return [int(s.start), int(s.stop)]


def _jsonable(x):
    return x.tolist() if isinstance(x, np.ndarray) else float(x)


def _argmax_bytes(comm, model, prompt):
    """Bytes all ranks send to pick one greedy token: distributed argmax vs gathered logits."""
    x = model.final_hidden(prompt)[:, -1:]
    out = {}
    for how in ("distributed", "gather"):
        with CommLedger() as led:
            if how == "distributed":
                model.argmax_last(x)
            else:
                model.tp.gather_from_tp(model.logit_parts(x[:, -1]), axis=-1).argmax(-1)
        out[how] = comm.allreduce(sum(r["bytes_sent"] or 0 for r in led.records))
    return out


def _default_mode_cost(comm, model, prompt):
    """Time and bytes of one forward in deterministic mode against the default mode."""
    results = {"deterministic": _timed_forward(comm, model, prompt)}
    model.tp.deterministic = False
    results["default"] = _timed_forward(comm, model, prompt)
    model.tp.deterministic = True
    return results


def _timed_forward(comm, model, prompt, repeats=3):
    times, sent = [], 0
    for _ in range(repeats):
        comm.Barrier()
        with CommLedger() as led:
            t0 = time.perf_counter()
            model.forward(prompt)
            times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        sent = comm.allreduce(sum(r["bytes_sent"] or 0 for r in led.records))
    return {"seconds": float(np.median(times)), "bytes_sent_all_ranks": int(sent)}


def _serial_comparison(args, p, prompt, logits, hidden, generated):
    """Rank 0 runs the same code on one process and compares; (report, serial model)."""
    cfg, params, _ = load_model(args.preset, args.weights, args.seed)
    ways = p if args.deterministic else None
    serial = GPT(cfg, params, MPI.COMM_SELF, deterministic=args.deterministic, ways=ways)
    t0 = time.perf_counter()
    s_hidden = []
    s_logits = serial.forward(prompt, hidden=s_hidden)
    s_generated = serial.generate(prompt, args.tokens)
    serial_seconds = time.perf_counter() - t0
    final = serial.final_hidden(prompt)
    scale = np.abs(final) @ np.abs(params["wte.weight"]).T  # sum_k |h_k w_k| of the last matmul
    layers = []
    for i, (a, b) in enumerate(zip(hidden, s_hidden)):
        layers.append({"layer": i, "bitwise_equal": numerics.bitwise_equal(a, b),
                       "max_ulp": numerics.max_ulp(a, b),
                       "max_error_vs_largest": float(np.abs(a - b).max() / (
                           numerics.unit_roundoff(a.dtype) * max(np.abs(b).max(), 1e-30)))})
    return dict(
        reference="serial, same blocking (emulated split)" if args.deterministic else "serial",
        tokens_parallel=generated[0].tolist(), tokens_serial=s_generated[0].tolist(),
        all_tokens_parallel=generated.tolist(), all_tokens_serial=s_generated.tolist(),
        tokens_identical=bool(np.array_equal(generated, s_generated)),
        bitwise_equal=numerics.bitwise_equal(logits, s_logits),
        max_ulp=numerics.max_ulp(logits, s_logits),
        max_normalized_error=numerics.normalized_error(logits, s_logits.astype(np.float64), scale),
        layers=layers, serial_seconds=serial_seconds, prompt_length=int(prompt.shape[1])), serial


def print_report(r, led):
    """Print the demo's report ``r`` (the same dict --json writes) and the ledger ``led``."""
    yes = {True: "yes", False: "NO"}
    print("\nsharding (each rank keeps only its slices):")
    print(f"  {'rank':>4}  {'heads':>9}  {'MLP columns':>13}  {'vocab rows':>13}  {'parameters':>11}")
    for s in r["sharding"]:
        print(f"  {s['rank']:>4}  {_span(s['heads']):>9}  {_span(s['mlp_columns']):>13}  "
              f"{_span(s['vocab_rows']):>13}  "
              f"{format_bytes(s['param_bytes']):>11}")
    print(f"  serial model: {format_bytes(r['serial_param_bytes'])} of parameters; peak memory of the "
          f"largest rank {format_bytes(r['peak_rss_bytes'])}")
    n_new = len(r["tokens_parallel"]) - r["prompt_length"]
    print(f"\ntoken ids of the first sequence: a prompt of {r['prompt_length']}, "
          f"then {n_new} generated greedily")
    print(f"  parallel: {r['tokens_parallel']}")
    print(f"  serial:   {r['tokens_serial']}")
    if r.get("task"):
        t = r["task"]
        print("\nheld-out sums (never seen in training): parallel and serial answers")
        for text, par, ser, want in t["examples"]:
            print(f"  {text:>9} = {par:<6} {ser:<6} {'ok' if par == ser == want else f'want {want}'}")
        print(f"  exact match on all {t['n']} held-out sums: parallel {100 * t['accuracy_parallel']:.1f}%,"
              f" serial {100 * t['accuracy_serial']:.1f}%")
    print(f"\nparallel vs {r['reference']}:")
    print(f"  tokens identical      {yes[r['tokens_identical']]}")
    print(f"  logits bitwise equal  {yes[r['bitwise_equal']]}")
    print(f"  max ULP distance      {r['max_ulp']:.0f}"
          + ("  (large where a logit is near 0: its ULP is tiny)" if r["max_ulp"] > 0 else ""))
    print(f"  max error             {r['max_normalized_error']:.3f} u * sum|h_k w_k| of the last matmul "
          f"(one {r['world_size']}-term sum in any order: <= {r['world_size'] - 1};\n"
          f"                        here the differences of {r['config']['n_layer']} layers add up)")
    print(f"  ranks agree           {yes[r['ranks_agree']]} (every rank holds identical logits)")
    print("  per layer, residual stream after each block (max ULP; max error in u * largest |x|):")
    print("    " + ", ".join(f"{x['layer']}: {x['max_ulp']:.0f} ULP, {x['max_error_vs_largest']:.2f}"
                           for x in r["layers"]))
    wire = r.get("comm_dtype", "float32")
    if wire != "float32" and r["world_size"] > 1:
        ratio = 2.0 ** (24 - {"float16": 11, "bfloat16": 8}[wire])
        print(f"  Every reduction and logit gather travelled as {wire} ({r['rounding']} rounding): "
              f"in units of {wire}'s u\n  the max error is {r['max_normalized_error'] / ratio:.3f} "
              f"(u_float32 / u_{wire} = 1/{ratio:.0f}).")
    elif not r["deterministic"] and r["world_size"] > 1:
        print("  Row-parallel layers add the ranks' partial sums in another order than one matmul, "
              "so the last bits differ;\n  --deterministic fixes the order and makes them equal.")
    a = r["argmax_bytes"]
    print(f"\npicking a greedy token: the distributed argmax sends {format_bytes(a['distributed'])}, "
          f"gathering the logits {format_bytes(a['gather'])} (all ranks together)")
    if a["distributed"] > a["gather"]:
        print("  (each shard sends 2 float64 per sequence, gathering sends vocab/p float32: with a "
              "vocabulary this small, gathering is cheaper)")
    if r["deterministic_cost"]:
        d, base = r["deterministic_cost"]["deterministic"], r["deterministic_cost"]["default"]
        print(f"deterministic mode: one forward {d['seconds'] * 1e3:.2f} ms and "
              f"{format_bytes(d['bytes_sent_all_ranks'])} vs default {base['seconds'] * 1e3:.2f} ms "
              f"and {format_bytes(base['bytes_sent_all_ranks'])}")
    s = r["seconds"]
    print(f"\ntime (forward + generation, slowest rank): {s['total'] * 1e3:.1f} ms = compute "
          f"{s['compute'] * 1e3:.1f} ms + communication {s['comm'] * 1e3:.1f} ms "
          f"({100 * s['comm'] / max(s['total'], 1e-12):.0f}%); serial {r['serial_seconds'] * 1e3:.1f} ms")
    print("\ncommunication ledger of rank 0:")
    print(led.summary())


if __name__ == "__main__":
    run_main(main)
