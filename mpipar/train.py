"""python -m mpipar.train -- train a small GPT to add: data-, tensor- and pipeline-parallel.

    mpirun -n 2 python -m mpi4py -m mpipar.train                  # ~1500 steps, >= 99% held-out
    mpirun -n 4 python -m mpi4py -m mpipar.train --dp 2 --tp 2    # a 2 x 2 mesh
    mpirun -n 4 python -m mpi4py -m mpipar.train --pp 4           # 4 stages, 1F1B, 8 micro-batches
    mpirun -n 4 python -m mpi4py -m mpipar.train --zero 3         # ZeRO-3 over 4 data-parallel ranks
    python -m mpipar.train --pp 4 --schedule zb-h1 --show-schedule   # the schedule, drawn
    python -m mpipar.train --preset tiny --steps 20               # seconds, for tests
    mpirun -n 2 python -m mpi4py -m mpipar.train --dp-micro-batches 4 --overlap thread

The task is multi-digit addition written as text ("347+589=" -> the digits of
936, least significant first; see mpipar.addition). Every step trains on a
global batch that depends only on the seed and the step, split over the
data-parallel ranks, whose gradients are summed (overlapped with backward in
buckets) before every replica applies the same AdamW update. Accuracy is exact
match of the generated answer on held-out sums that training never sees.

With --pp the blocks are cut into stages on different ranks and every replica's
batch into --micro-batches, run in the order of --schedule (gpipe, 1f1b,
interleaved with --virtual-stages chunks per rank, zb-h1); see
mpipar.parallel.pipeline_train. Pipelines need layers: without --n-layer the model
gets one block per stage if the recipe has fewer. There --overlap says what moves the
activations and gradients between stages while a stage computes: poll (tests between
steps), thread (a communication thread inside MPI) or none; the results are the same bits.

With --tp, --overlap thread also runs the asynchronous linear: each column-parallel layer's
backward reduces its input gradient on a communication thread while it computes its weight
gradients (see mpipar.parallel.tp_async), with the same bits as --overlap none.

With --dp-micro-batches M every replica accumulates the gradients of M micro-batches:
--dp-sync each all-reduces each micro-batch's buckets while the next one computes, last
sums them locally and all-reduces once during the last backward (DDP's no_sync); see
mpipar.parallel.dp_micro. --in-flight N: buckets' rings at once with --overlap thread.

With --zero 1, 2 or 3 the data-parallel ranks shard AdamW's moments, then the
gradients, then the parameters (ZeRO; see mpipar.parallel.zero); the report gives
the memory per rank, predicted and held, and the bytes sent in a step.
"""
import math
import time

from mpi4py import MPI
import numpy as np

from . import train_options
from .cli import Progress, json_path_problem, print0, run_main, watchdog, write_json
from .collectives.progress import ProgressEngine
from .measure.ledger import CommLedger
from .measure.units import format_bytes
from .models import GPT, GPTConfig, RandomSource, checkpoint
from .models.optim import AdamW, learning_rate
from .parallel.data_parallel import DataParallel
from .parallel.mesh import Mesh
from .parallel.pipeline_report import describe, pipeline_entry
from .parallel.pipeline_train import PipelineTraining
from .parallel.schedule_chart import chart, summary
from .parallel.schedules import make_schedule
from .parallel.zero import Zero
from .parallel.zero_report import describe_memory, memory_entry, sent_by_op
from .tasks.addition import AdditionTask, batch_slice
from .train_options import memory_problem, settings_from  # noqa: F401 (the tests use them)


def build_parser():
    return train_options.build_parser(__doc__.split("\n\n", 1)[1])


def evaluate(model, task, dp_comm, n=None):
    """Exact-match accuracy on the held-out sums; the dp replicas split the set."""
    pairs = task.heldout_pairs()[:n]
    mine = batch_slice(pairs, dp_comm.Get_rank(), dp_comm.Get_size())
    correct = 0
    if len(mine):
        out = model.generate(task.prompts(mine), task.answer_len)
        correct = int(np.sum(task.answers_from_generated(out) == mine.sum(1)))
    return dp_comm.allreduce(correct) / len(pairs)


def activations_entry(world, model, led):
    """Per rank: the bytes of activations the last step saved for backward, in the regions
    tensor parallelism leaves replicated and in those it splits (gpt2.activation_bytes), and
    the bytes it sent in the last step, by collective."""
    ranks = world.allgather(dict(model.activation_bytes, bytes_sent=sent_by_op(led)))
    return {key: [r[key] for r in ranks] for key in ranks[0]}


def show_schedule(s):
    """--show-schedule: the schedule as data, its simulated timeline and its bubble."""
    schedule = make_schedule(s["schedule"], s["pp"], s["micro_batches"], s["virtual_stages"])
    print(chart(schedule))
    print()
    print(summary(schedule))
    return 0


def build_trainer(s, config, mesh):
    """(the step's trainer, a function giving the model to evaluate) for the settings."""
    # every tensor-parallel rank generates only its own slices of the seed's random model
    source = RandomSource(config, s["seed"])
    if s["pipeline"]:
        schedule = make_schedule(s["schedule"], s["pp"], s["micro_batches"], s["virtual_stages"])
        training = PipelineTraining(config, source, mesh, schedule, deterministic=s["deterministic"],
                                    optimizer=dict(lr=s["lr"]), overlap=s["overlap"],
                                    algorithm="ring")
        return training, lambda: training.whole_model(algorithm="ring")
    model = GPT(config, source, mesh.tp_comm, algorithm="ring", deterministic=s["deterministic"],
                sequence_parallel=s["sp"])
    if s["tp_async"]:  # the asynchronous linear: column-parallel backwards reduce on a thread
        model.tp.engine = ProgressEngine()
    if s["zero"]:
        trainer = Zero(model, mesh.dp_comm, AdamW(model, lr=s["lr"]), stage=s["zero"],
                       deterministic=s["deterministic"], overlap=s["overlap"] != "none")
        return trainer, trainer.full_model
    trainer = DataParallel(model, mesh.dp_comm, AdamW(model, lr=s["lr"]),
                           bucket_bytes=s["bucket_bytes"], overlap=s["overlap"],
                           deterministic=s["deterministic"], in_flight=s["in_flight"],
                           micro_batches=s["dp_micro_batches"], sync=s["dp_sync"])
    return trainer, lambda: model


def main(argv=None):
    args = build_parser().parse_args(argv)
    world = MPI.COMM_WORLD
    s = settings_from(args, world.Get_size())
    if args.show_schedule:
        return show_schedule(s) if world.Get_rank() == 0 else 0
    # before minutes of training, not after; rank 0 writes, so its verdict counts
    problem = json_path_problem(world, args.json) or world.bcast(
        checkpoint.folder_problem(args.out) if args.out and world.Get_rank() == 0 else None)
    if problem:
        raise ValueError(problem)
    watchdog(world, args.timeout)
    task = AdditionTask(digits=s["digits"], seed=s["seed"], heldout=s["heldout"])
    config = GPTConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len, n_embd=s["n_embd"],
                       n_head=s["n_head"], n_layer=s["n_layer"])
    with Mesh(world, s["dp"], s["tp"], pp=s["pp"]) as mesh:
        trainer, trained = build_trainer(s, config, mesh)
        pipe = (f" x pp={s['pp']} ({s['schedule']}, {s['micro_batches']} micro-batches"
                + (f", {s['virtual_stages']} chunks per rank" if s["virtual_stages"] > 1 else "")
                + ")") if s["pipeline"] else ""
        print0(world, f"training {config.n_layer}-layer GPT (d={config.n_embd}, "
                      f"{config.n_head} heads) on {s['digits']}-digit addition: {s['steps']} steps "
                      f"of {s['global_batch']} sums, dp={s['dp']}{pipe} x tp={s['tp']}")
        history, evals, steps = [], [], []
        bar = Progress(world, s["steps"], quiet=args.quiet)
        mask = task.loss_mask()
        t_start = time.perf_counter()
        for step in range(s["steps"]):
            with CommLedger() as led:  # the last step's is kept: its bytes between stages
                out = trainer.step(task.batch(step, s["global_batch"]), mask,
                                   learning_rate(step, s["steps"], s["lr"]))
            history.append(out["loss"])
            steps.append(out)
            if not (math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"])):
                raise ValueError(f"step {step + 1}: the loss is {out['loss']} and the gradient norm "
                                 f"{out['grad_norm']}; training diverged (--lr {s['lr']} too large?)")
            tokens_per_second = s["global_batch"] * (task.seq_len - 1) / out["seconds"]
            bar.update(loss=f"{out['loss']:.4f}", tok_s=f"{tokens_per_second:.0f}")
            if (step + 1) % args.eval_every == 0 and step + 1 < s["steps"]:
                evals.append(dict(step=step + 1, accuracy=evaluate(trained(), task, mesh.dp_comm)))
        train_seconds = time.perf_counter() - t_start
        bar.close()
        model = trained()
        accuracy = evaluate(model, task, mesh.dp_comm)
        evals.append(dict(step=s["steps"], accuracy=accuracy))
        examples = task.evaluate(model.generate, n=5)["examples"]
        saved = None
        if args.out and mesh.dp_rank == 0 and mesh.pp_rank == 0:
            saved = checkpoint.save(model, args.out, metadata=dict(
                task="addition", digits=s["digits"], seed=s["seed"], heldout=s["heldout"],
                steps=s["steps"], accuracy=accuracy))
        pipeline = None
        if s["pipeline"]:
            pipeline = pipeline_entry(mesh, trainer.schedule, steps, led)
            trainer.close()  # its communication thread, if --overlap thread started one
            for out in steps:
                out["timeline"] = []  # the pipeline's timelines are in its entry
        timelines = world.gather(steps[-1]["timeline"], root=0)
        activations = None if s["pipeline"] else activations_entry(world, trainer.model, led)
        memory = None if s["pipeline"] else memory_entry(trainer, world, led)
        if s["tp_async"]:
            trainer.model.tp.engine.close()
    print0(world, f"held-out exact match: {100 * accuracy:.1f}% of {s['heldout']} sums; "
                  f"trained in {train_seconds:.1f} s")
    for text, got, want in examples:
        print0(world, f"  {text} = {got}  ({'ok' if got == want else 'want ' + want})")
    if pipeline:
        print0(world, describe(pipeline))
    if activations:
        print0(world, f"rank 0 kept {format_bytes(activations['replicated'][0])} of activations in the "
                      f"replicated regions{' (sequence-parallel)' if s['sp'] else ''}, "
                      f"{format_bytes(activations['sharded'][0])} split by tensor parallelism")
    if memory:
        print0(world, describe_memory(memory))
    if saved:
        print(f"saved {saved}")
    if world.Get_rank() == 0:
        def med(key):  # a pipeline step has no backward or bucket wait of its own
            return float(np.median([o[key] for o in steps])) if key in steps[0] else None
        write_json(world, args.json, dict(
            loss=history, grad_norm=[o["grad_norm"] for o in steps], accuracy=accuracy,
            eval=evals, examples=examples, settings=s, world_size=world.Get_size(), dp=s["dp"],
            tp=s["tp"], pp=s["pp"], seconds=dict(total=train_seconds, step_median=med("seconds"),
                                                 backward_median=med("backward_seconds"),
                                                 sync_wait_median=med("sync_wait_seconds")),
            timeline=timelines, pipeline=pipeline, activation_bytes_per_rank=activations,
            memory=memory, checkpoint=saved))
    return 0


if __name__ == "__main__":
    run_main(main)
