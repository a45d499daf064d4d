"""``python -m mpipar.demo --pp P``: the model's layers over P pipeline stages, next to the same
model on one process.

The world's ranks form a dp = 1 x pp = P x tp = ranks / P mesh (``parallel.mesh``): stage k holds
a contiguous range of blocks (the first also the embedding, the last the final norm and the LM
head), tensor-parallel over its tp ranks, and reads only its own layers' slices. The prompt's
copies go through the stages as micro-batches (``parallel.pipeline_inference``): the prefill is
GPipe's forward, then every generated token of every sequence visits every stage, and each
stage keeps the KV cache of its own layers.

What rank 0 reports: which rank holds which layers (and bytes), the answers of the pipeline and
of the serial model, whether the tokens are identical and how close the prompt's logits are
(with tp = 1 per stage no sum is reordered, so they are bitwise equal; with tp > 1 the
row-parallel sums are, and --deterministic makes them equal to the emulated split), each rank's
bubble (time blocked on the pipeline's messages) against the ideal of equal stages, and every
message in the ledger of rank 0.
"""
import time

from mpi4py import MPI
import numpy as np

from .collectives.channel import quiet_wait
from .demo_models import head_weight
from .generate_output import answers
from .measure import numerics
from .measure.cost_model import CostModel
from .measure.ledger import CommLedger
from .measure.memory import peak_rss_per_rank
from .measure.units import format_bytes
from .parallel import pipeline_inference_report
from .parallel.pipeline_inference import PipelineInference, micro_batch_problem, oversubscribed

__all__ = ["option_problem", "batch", "run", "print_report"]

POLL = 1e-4  #: seconds a waiting stage sleeps between tests where ranks outnumber cores


def option_problem(args, p):
    """The problem with --pp, --copies and --micro-batches, or None."""
    if args.pp < 1 or p % args.pp:
        return f"--pp {args.pp} must be a whole number >= 1 that divides the {p} ranks (tp = ranks / pp)"
    for name, value in (("--copies", args.copies), ("--micro-batches", args.micro_batches)):
        if value is not None and args.pp == 1:
            return f"{name} needs --pp > 1"
        if value is not None and value < 1:
            return f"{name} must be >= 1, not {value}"
    if args.copies is not None and args.subject == "addition":
        return "--copies: the adder asks its held-out sums, one sequence each"
    return None


def batch(s, args, pp):
    """The demo's sequences: the adder's held-out sums as they are; otherwise ``--copies`` copies
    of the prompt (default one per stage, so that every stage can be busy at once)."""
    if s.task is not None:
        return s.prompt
    copies = args.copies if args.copies is not None else pp
    return np.repeat(s.prompt, copies, axis=0)


def run(args, comm, mesh, s):
    """Generate with the pipeline, compare on rank 0 with the serial model; the report on rank 0
    (None elsewhere) and rank 0's ledger."""
    stage, rank = s.stage, comm.Get_rank()
    prompt = batch(s, args, mesh.pp)
    s.model.check_tokens(prompt, extra=s.tokens)
    m = args.micro_batches or prompt.shape[0]
    problem = micro_batch_problem(prompt.shape[0], m)
    if problem:  # the same on every rank, before the first message
        raise ValueError(f"--micro-batches {m}: {problem}")
    pipe = PipelineInference(stage, mesh.pp_comm, poll=POLL if oversubscribed(comm) else None)
    stopped = []

    def on_tokens(t, rows, new):  # stop once the first sequence has answered, as the serial run does
        if rows.start == 0 and not stopped and s.stop(new):
            stopped.append(t)

    comm.Barrier()
    with CommLedger(cost_model=CostModel.calibrate(comm)) as led:
        t0 = time.perf_counter()
        out = pipe.generate(prompt, s.tokens, micro_batches=m, stop_id=s.stop_id, on_tokens=on_tokens)
        seconds = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    pipeline = pipeline_inference_report.gather(comm, mesh, pipe)
    logits = pipe.logits_on_first(prompt[:1])  # the first sequence's, on rank 0 (outside the timing)
    agree = numerics.ranks_agree(comm, out)
    layers = comm.gather(dict(rank=rank, stage=mesh.pp_rank, tp_rank=mesh.tp_rank,
                              layers=[stage.blocks_range.start, stage.blocks_range.stop],
                              embedding=stage.first, head=stage.last,
                              param_bytes=s.model.param_bytes()), root=0)
    rss = peak_rss_per_rank(comm)
    report = None
    if rank == 0:
        report = _compare(args, s, mesh, prompt, out, logits)
        report.update(model=s.name, title=s.title, world_size=comm.Get_size(), pp=mesh.pp,
                      tp=mesh.tp, sequences=int(prompt.shape[0]), ranks_agree=agree,
                      stages=layers, seconds=seconds, pipeline=pipeline,
                      tokens_generated=sum(len(a) for a in answers(out, prompt.shape[1], s.stop_id)),
                      config=s.model.config.to_dict(), deterministic=args.deterministic,
                      peak_rss_bytes=max(rss), peak_rss_per_rank=rss,
                      comm={"summary": {f"{op}/{alg}": g for (op, alg), g in led.totals().items()},
                            **led.to_dict()})
    quiet_wait(comm.Ibarrier())  # the other ranks sleep while rank 0 runs the serial model
    return report, led


def _compare(args, s, mesh, prompt, out, logits):
    """Rank 0: the same code on one process (the emulated tp split in deterministic mode)."""
    serial = s.serial(args.deterministic, mesh.tp if args.deterministic else None)
    t0 = time.perf_counter()
    s_out = serial.generate(prompt, out.shape[1] - prompt.shape[1], on_token=s.stop)
    serial_seconds = time.perf_counter() - t0
    s_logits = serial.forward(prompt[:1])
    scale = np.abs(serial.final_hidden(prompt[:1])) @ np.abs(head_weight(serial)).T
    T = prompt.shape[1]
    mine, theirs = answers(out, T, s.stop_id), answers(s_out, T, s.stop_id)
    report = dict(reference="serial, same blocking (emulated split)" if args.deterministic else "serial",
                  prompt_length=T, tokens_parallel=out[0].tolist(), tokens_serial=s_out[0].tolist(),
                  tokens_identical=mine == theirs, bitwise_equal=numerics.bitwise_equal(logits, s_logits),
                  max_ulp=numerics.max_ulp(logits, s_logits),
                  max_normalized_error=numerics.normalized_error(logits, s_logits.astype(np.float64), scale),
                  serial_seconds=serial_seconds)
    if s.tokenizer is not None:
        report["chat"] = dict(message=s.message, answer_parallel=s.answer(out[:1]),
                              answer_serial=s.answer(s_out[:1]))
    if s.task is not None:
        par, ser = s.task.answers_from_generated(out), s.task.answers_from_generated(s_out)
        pairs = s.task.heldout_pairs()[:len(prompt)]
        report["task"] = dict(name="addition", examples=[(f"{a}+{b}", int(x), int(y), int(a + b))
                                                         for (a, b), x, y in zip(pairs, par, ser)])
    return report


def stage_table(r):
    """Who holds which layers: rank, stage, tp rank, blocks, the embedding / head, bytes."""
    lines = ["  rank  stage  tp rank  blocks        also                  parameters"]
    for row in r["stages"]:
        first, stop = row["layers"]
        also = ", ".join(w for w, has in (("embedding", row["embedding"]), ("norm + LM head", row["head"]))
                         if has) or "-"
        lines.append(f"  {row['rank']:>4}  {row['stage']:>5}  {row['tp_rank']:>7}  "
                     f"{f'{first}-{stop - 1} ({stop - first})':<12}  {also:<20}  "
                     f"{format_bytes(row['param_bytes']):>10}")
    if r["pp"] > 1 and r["config"].get("tie_embeddings", True):
        lines.append("  the token embedding is also the LM head (tied): the first and the last stage "
                     "each hold a copy")
    return lines


def print_report(r, led):
    """Print the pipelined demo's report ``r`` and rank 0's ledger ``led``."""
    yes = {True: "yes", False: "NO"}
    print(f"\nstages ({r['pp']} stages x tp {r['tp']}; each rank reads and keeps only its layers):")
    print("\n".join(stage_table(r)))
    print(f"  peak memory of the largest rank {format_bytes(r['peak_rss_bytes'])}")
    if r.get("chat"):
        c = r["chat"]
        print(f"\nuser: {c['message']}")
        print(f"  pipeline: {c['answer_parallel'].strip()}")
        print(f"  serial:   {c['answer_serial'].strip()}")
    if r.get("task"):
        print("\nheld-out sums (never seen in training): pipeline and serial answers")
    for text, par, ser, want in r.get("task", {}).get("examples", []):
        print(f"  {text:>9} = {par:<6} {ser:<6} {'ok' if par == ser == want else f'want {want}'}")
    print(f"\npipeline vs {r['reference']} ({r['sequences']} sequence(s); logits of the "
          f"{r['prompt_length']}-token prompt):")
    print(f"  tokens identical      {yes[r['tokens_identical']]}")
    print(f"  logits bitwise equal  {yes[r['bitwise_equal']]}"
          + ("  (tp = 1 per stage: no sum is reordered)" if r["tp"] == 1 and r["bitwise_equal"] else ""))
    print(f"  max ULP distance      {r['max_ulp']:.0f}")
    print(f"  max error             {r['max_normalized_error']:.3f} u * sum|h_k w_k| of the last matmul")
    print(f"  ranks agree           {yes[r['ranks_agree']]} (every rank holds the same tokens)")
    print(f"\ntime: {r['tokens_generated']} tokens in {r['seconds'] * 1e3:.0f} ms over the pipeline; "
          f"serial {r['serial_seconds'] * 1e3:.0f} ms (rank 0 alone, the other ranks idle)")
    print(pipeline_inference_report.summary(r["pipeline"]))
    print("  one sequence keeps one stage busy at a time: pipelining raises throughput over several "
          "sequences,\n  not the latency of one (every token still visits every stage in turn)")
    print("\ncommunication ledger of rank 0:")
    print(led.summary())
