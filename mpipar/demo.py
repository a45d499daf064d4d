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
import json
import os
from pathlib import Path
import time

from mpi4py import MPI
import numpy as np

from .cli import Parser, print0, run_main
from .collectives.channel import quiet_wait
from .collectives.lowp import ROUNDINGS, WIRE
from .demo_report import print_report
from .measure import numerics
from .collectives import ALGORITHMS
from .measure.cost_model import CostModel
from .measure.ledger import CommLedger
from .models import GPT, PRESETS, GPTConfig, init_params, load_state_dict
from .tasks.addition import AdditionTask


SHIPPED = Path(__file__).parent / "data" / "addition" / "model.safetensors"


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


def load_model_inputs(args):
    """(config, params, task) from --weights, --preset or the shipped model; task is the
    AdditionTask a checkpoint of ``python -m mpipar.train`` was trained on, else None."""
    if args.preset is not None and args.weights is not None:
        raise ValueError("give --preset (random weights) or --weights, not both")
    if args.preset is not None:
        config = PRESETS[args.preset]
        return config, init_params(config, args.seed), None
    weights = args.weights or str(SHIPPED)
    config_json = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    if not os.path.isfile(weights):
        raise ValueError(f"--weights {weights!r}: no such file")
    if not os.path.isfile(config_json):
        raise ValueError(f"--weights needs the Hugging Face config.json beside it: {config_json}")
    config = GPTConfig.from_hf_json(config_json)
    with open(config_json) as f:
        meta = json.load(f).get("mpipar", {})
    task = None
    if meta.get("task") == "addition":
        task = AdditionTask(digits=int(meta["digits"]), seed=int(meta["seed"]),
                            heldout=int(meta["heldout"]))
    return config, load_state_dict(weights, config), task


def task_accuracy(model, task, p):
    """Exact match on every held-out sum, generated by ``model``."""
    pairs = task.heldout_pairs()
    out = model.generate(task.prompts(pairs), task.answer_len)
    return float(np.mean(task.answers_from_generated(out) == pairs.sum(1)))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tokens is not None and args.tokens < 0) or args.prompt_length < 1:
        parser.error("--tokens must be >= 0 and --prompt-length >= 1")
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    config, params, task = load_model_inputs(args)
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
                                mlp_columns=_range(_mlp_cols(config, p, rank)),
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
    accuracy = task_accuracy(model, task, p) if task is not None else None
    seconds = {"total": comm.allreduce(total, op=MPI.MAX), "comm": comm.allreduce(comm_s, op=MPI.MAX)}
    seconds["compute"] = seconds["total"] - seconds["comm"]

    report = None
    if rank == 0:
        report, serial = _serial_comparison(args, p, prompt, logits, hidden, generated)
        if task is not None:
            report["task"] = dict(name="addition", digits=task.digits, n=len(task.heldout_pairs()),
                                  accuracy_parallel=accuracy,
                                  accuracy_serial=task_accuracy(serial, task, 1),
                                  examples=_side_by_side(task, prompt, report))
    quiet_wait(comm.Ibarrier())  # the other ranks sleep while rank 0 runs the serial model
    if rank != 0:
        return 0
    report.update(world_size=p, config=config.to_dict(), ranks_agree=agree, seconds=seconds,
                  deterministic=args.deterministic, algorithm=algorithm,
                  comm_dtype=args.comm_dtype, rounding=args.rounding,
                  sharding=sharding, serial_param_bytes=serial_bytes,
                  argmax_bytes=argmax_bytes, deterministic_cost=extra,
                  comm={"summary": {f"{op}/{alg}": g for (op, alg), g in led.totals().items()},
                        **led.to_dict()})
    print_report(report, led)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=_jsonable)
        print(f"\nwrote {args.json}")
    return 0


def _side_by_side(task, prompt, report):
    """[(sum, parallel answer, serial answer, correct answer)] as text."""
    pairs = task.heldout_pairs()[:len(prompt)]
    par = task.answers_from_generated(np.array(report["all_tokens_parallel"]))
    ser = task.answers_from_generated(np.array(report["all_tokens_serial"]))
    return [(f"{a}+{b}", int(x), int(y), int(a + b)) for (a, b), x, y in zip(pairs, par, ser)]


def _range(s):
    return [int(s.start), int(s.stop)]


def _mlp_cols(config, p, r):
    from .collectives.blocks import split
    return split(4 * config.n_embd, p, r)


def _jsonable(x):
    return x.tolist() if isinstance(x, np.ndarray) else float(x)


def _argmax_bytes(comm, model, prompt):
    """Bytes all ranks send to pick one greedy token: distributed argmax vs gathered logits."""
    x = model.blocks(model.embed(prompt))[:, -1:]
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
    cfg, params, _ = load_model_inputs(args)
    ways = p if args.deterministic else None
    serial = GPT(cfg, params, MPI.COMM_SELF, deterministic=args.deterministic, ways=ways)
    t0 = time.perf_counter()
    s_hidden = []
    s_logits = serial.forward(prompt, hidden=s_hidden)
    s_generated = serial.generate(prompt, args.tokens)
    serial_seconds = time.perf_counter() - t0
    final = serial.blocks(serial.embed(prompt))
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


if __name__ == "__main__":
    run_main(main)
