"""python -m mpipar.train -- train a small GPT to add, data- (and tensor-) parallel.

    mpirun -n 2 python -m mpi4py -m mpipar.train                  # ~1500 steps, >= 99% held-out
    mpirun -n 4 python -m mpi4py -m mpipar.train --dp 2 --tp 2    # a 2 x 2 mesh
    python -m mpipar.train --preset tiny --steps 20               # seconds, for tests

The task is multi-digit addition written as text ("347+589=" -> the digits of
936, least significant first; see mpipar.addition). Every step trains on a
global batch that depends only on the seed and the step, split over the
data-parallel ranks, whose gradients are summed (overlapped with backward in
buckets) before every replica applies the same AdamW update. Accuracy is exact
match of the generated answer on held-out sums that training never sees.
"""
import argparse
import time

from mpi4py import MPI
import numpy as np

from .cli import Parser, Progress, json_path_problem, print0, run_main, write_json
from .models import GPT, GPTConfig, RandomSource, checkpoint
from .models.optim import AdamW, learning_rate
from .parallel.data_parallel import DataParallel
from .parallel.mesh import Mesh
from .tasks.addition import RECIPES, AdditionTask, batch_slice


def build_parser():
    p = Parser(prog="python -m mpipar.train", description=__doc__.split("\n\n", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(RECIPES), default="default",
                   help="the training recipe (task, model shape, schedule): tiny trains in seconds "
                        "(tests); default reaches >= 99%% (minutes)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data and held-out set")
    p.add_argument("--dp", type=int, help="data-parallel ranks (default: all ranks / tp)")
    p.add_argument("--tp", type=int, help="tensor-parallel ranks per replica (default 1)")
    p.add_argument("--global-batch", type=int, help="examples per step, all ranks together")
    p.add_argument("--lr", type=float, help="peak learning rate (warm-up, then cosine decay)")
    p.add_argument("--bucket-kb", type=float, default=64,
                   help="gradient bucket size in KiB for the overlapped all-reduce (default 64)")
    p.add_argument("--no-overlap", action="store_true",
                   help="all-reduce the gradients after backward instead of during it")
    p.add_argument("--deterministic", action="store_true", help="add gradients in fixed rank "
                   "order: the same bits as one process accumulating the same shards")
    p.add_argument("--eval-every", type=int, default=500, help="held-out evaluation interval")
    p.add_argument("--json", metavar="PATH", help="rank 0 writes the loss history and settings")
    p.add_argument("--out", metavar="DIR", help="save model.safetensors + config.json here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def settings_from(args, world):
    """The run's settings, validated identically on every rank (ValueError if impossible)."""
    s = dict(RECIPES[args.preset])
    for key in ("steps", "global_batch", "lr"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    tp = args.tp or 1
    dp = args.dp or max(1, world // tp)
    if s["steps"] < 1 or s["global_batch"] < dp or s["lr"] <= 0 or args.bucket_kb <= 0:
        raise ValueError("--steps must be >= 1, --global-batch >= dp, --lr and --bucket-kb > 0")
    if tp > s["n_head"]:
        raise ValueError(f"--tp {tp}: the model has {s['n_head']} heads, so at most {s['n_head']}")
    s.update(dp=dp, tp=tp, seed=args.seed, preset=args.preset, overlap=not args.no_overlap,
             deterministic=args.deterministic, bucket_bytes=int(args.bucket_kb * 1024))
    return s


def evaluate(model, task, dp_comm, n=None):
    """Exact-match accuracy on the held-out sums; the dp replicas split the set."""
    pairs = task.heldout_pairs()[:n]
    mine = batch_slice(pairs, dp_comm.Get_rank(), dp_comm.Get_size())
    correct = 0
    if len(mine):
        out = model.generate(task.prompts(mine), task.answer_len)
        correct = int(np.sum(task.answers_from_generated(out) == mine.sum(1)))
    return dp_comm.allreduce(correct) / len(pairs)


def main(argv=None):
    args = build_parser().parse_args(argv)
    world = MPI.COMM_WORLD
    s = settings_from(args, world.Get_size())
    problem = json_path_problem(world, args.json)  # before minutes of training, not after
    if problem:
        raise ValueError(problem)
    task = AdditionTask(digits=s["digits"], seed=s["seed"], heldout=s["heldout"])
    config = GPTConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len, n_embd=s["n_embd"],
                       n_head=s["n_head"], n_layer=s["n_layer"])
    with Mesh.build(world, dp=s["dp"], tp=s["tp"]) as mesh:
        # every tensor-parallel rank generates only its own slices of the seed's random model
        model = GPT(config, RandomSource(config, s["seed"]), mesh.tp_comm, algorithm="ring")
        trainer = DataParallel(model, mesh.dp_comm, AdamW(model, lr=s["lr"]),
                               bucket_bytes=s["bucket_bytes"], overlap=s["overlap"],
                               deterministic=s["deterministic"])
        print0(world, f"training {config.n_layer}-layer GPT (d={config.n_embd}, "
                      f"{config.n_head} heads) on {s['digits']}-digit addition: {s['steps']} steps "
                      f"of {s['global_batch']} sums, dp={s['dp']} x tp={s['tp']}")
        history, evals, steps = [], [], []
        bar = Progress(world, s["steps"], quiet=args.quiet)
        mask = task.loss_mask()
        t_start = time.perf_counter()
        for step in range(s["steps"]):
            out = trainer.step(task.batch(step, s["global_batch"]), mask,
                               learning_rate(step, s["steps"], s["lr"]))
            history.append(out["loss"])
            steps.append(out)
            tokens_per_second = s["global_batch"] * (task.seq_len - 1) / out["seconds"]
            bar.update(loss=f"{out['loss']:.4f}", tok_s=f"{tokens_per_second:.0f}")
            if (step + 1) % args.eval_every == 0 and step + 1 < s["steps"]:
                evals.append(dict(step=step + 1, accuracy=evaluate(model, task, mesh.dp_comm)))
        train_seconds = time.perf_counter() - t_start
        bar.close()
        accuracy = evaluate(model, task, mesh.dp_comm)
        evals.append(dict(step=s["steps"], accuracy=accuracy))
        examples = task.evaluate(model.generate, n=5)["examples"]
        saved = None
        if args.out and mesh.dp_rank == 0:
            saved = checkpoint.save(model, args.out, metadata=dict(
                task="addition", digits=s["digits"], seed=s["seed"], heldout=s["heldout"],
                steps=s["steps"], accuracy=accuracy))
        timelines = world.gather(steps[-1]["timeline"], root=0)
    print0(world, f"held-out exact match: {100 * accuracy:.1f}% of {s['heldout']} sums; "
                  f"trained in {train_seconds:.1f} s")
    for text, got, want in examples:
        print0(world, f"  {text} = {got}  ({'ok' if got == want else 'want ' + want})")
    if saved:
        print(f"saved {saved}")
    if world.Get_rank() == 0:
        med = lambda key: float(np.median([o[key] for o in steps]))  # noqa: E731
        write_json(world, args.json, dict(
            loss=history, grad_norm=[o["grad_norm"] for o in steps], accuracy=accuracy,
            eval=evals, examples=examples, settings=s, world_size=world.Get_size(), dp=s["dp"],
            tp=s["tp"], seconds=dict(total=train_seconds, step_median=med("seconds"),
                                     backward_median=med("backward_seconds"),
                                     sync_wait_median=med("sync_wait_seconds")),
            timeline=timelines, checkpoint=saved))
    return 0


if __name__ == "__main__":
    run_main(main)
