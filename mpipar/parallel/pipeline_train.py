"""One training step of a GPT-2 over a dp x pp x tp mesh: the pipeline's schedule over
micro-batches, then what the step owes across stages and replicas.

    training = PipelineTraining(config, params, mesh, make_schedule("1f1b", mesh.pp, m))
    figures = training.step(tokens, mask, lr)

1. Each replica takes its ``batch_slice`` of the global batch and cuts it into m
   micro-batches (``batch_slice`` again: sizes differ by at most one). Every position's
   loss weight is mask / (predicted positions in the global batch), as in
   ``data_parallel``, so gradients of micro-batches and of replicas simply add up.
2. ``Pipeline.run`` executes the schedule; each stage sums its micro-batches' gradients in
   micro-batch order -- the order of gradient accumulation on one process. ``overlap``
   ("poll", "none", "thread") says what moves the messages meanwhile (``pipeline_parallel``);
   it changes when bytes travel, never which: every mode gives the same bits.
3. The tied embedding: the first stage's embedding gradient E and the last stage's head
   gradient H are added, E + H, over the two ranks that hold them (``mesh.embedding_comm``)
   or locally where one rank holds both -- one addition, the same bits either way.
4. Replicas add their gradients over ``dp_comm`` (in rank order in deterministic mode).
5. The global gradient norm: every parameter's squared norm (float64, the tensor-parallel
   shards' added by ``reduce_from_tp``) gathered from every stage and added in the order of
   the parameter table, wte once -- the same sum for every split. Clip, then AdamW per stage.

In deterministic mode a run is therefore bitwise equal to one process (pp = 1, the same dp
and the emulated tp split) running the same micro-batches; otherwise within rounding.
"""
import time

import numpy as np

from ..collectives import allreduce
from ..models.optim import AdamW
from ..models.params import is_sharded, param_table
from ..tasks.addition import batch_slice
from .data_parallel import loss_weights
from .pipeline_parallel import Pipeline


def micro_batch_problem(global_batch, dp, m):
    """Why ``global_batch`` examples cannot give every replica ``m`` micro-batches, or None."""
    if m < 1:
        return f"--micro-batches must be at least 1, not {m}"
    smallest = global_batch // dp
    if m > smallest:
        return (f"--micro-batches {m} exceeds the {smallest} examples a replica gets "
                f"(batch {global_batch} over dp = {dp}): use a larger --batch or fewer micro-batches")
    return None


class PipelineTraining:
    """A pipeline-parallel GPT-2 replica on ``mesh`` (``Mesh`` with pp), its optimizers, its step."""

    def __init__(self, config, params, mesh, schedule, *, deterministic=False, max_norm=1.0,
                 optimizer=None, overlap="poll", engine=None, **model_options):
        self.mesh, self.schedule, self.config = mesh, schedule, config
        self.deterministic, self.max_norm = deterministic, max_norm
        self.pipe = Pipeline(config, params, mesh.pp_comm, mesh.tp_comm, schedule,
                             overlap=overlap, engine=engine, deterministic=deterministic,
                             **model_options)
        self.overlap = self.pipe.overlap
        self.chunks = self.pipe.chunks
        self.optimizers = [AdamW(c.model, **(optimizer or {})) for c in self.chunks]
        self.dtype = self.pipe.dtype

    def close(self):
        """Stop the pipeline's communication thread, if it started one (``overlap="thread"``)."""
        self.pipe.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def micro_batches(self, tokens, mask):
        """This replica's m micro-batches of the global batch: (inputs, targets, weights)."""
        local = batch_slice(tokens, self.mesh.dp_rank, self.mesh.dp)
        out = []
        for i in range(self.schedule.m):
            mb = batch_slice(local, i, self.schedule.m)
            out.append((mb[:, :-1], mb[:, 1:], loss_weights(mask, len(tokens), len(mb), self.dtype)))
        return out

    def step(self, tokens, mask, lr=None):
        """Train on the global batch ``tokens`` (N, T+1); returns the step's figures."""
        t0 = time.perf_counter()
        run = self.pipe.run(self.micro_batches(tokens, mask))
        t_pipe = time.perf_counter()
        self._tie_embedding()
        self._sum_replicas()
        t_synced = time.perf_counter()
        loss = self._loss(run["loss"])
        norm = self._clip()
        for opt, chunk in zip(self.optimizers, self.chunks):
            opt.step(chunk.grads, lr)
        t_end = time.perf_counter()
        return dict(loss=loss, grad_norm=norm, seconds=t_end - t0, pipeline_seconds=t_pipe - t0,
                    sync_seconds=t_synced - t_pipe, wait_seconds=run["wait_seconds"],
                    compute_seconds=run["compute_seconds"], timeline=run["timeline"],
                    peak_in_flight=run["peak_in_flight"],
                    peak_activation_bytes=run["peak_activation_bytes"])

    def _tie_embedding(self):
        """wte's gradient on the first and the last stage: E + H, on both (step 3)."""
        first = [c for c in self.chunks if c.first]
        last = [c for c in self.chunks if c.last]
        n_shards = len(self.chunks[0].model.shards)
        for k in range(n_shards):
            if first and last:
                total = first[0].embedding_grads[k]["wte.weight"] + last[0].grads[k]["wte.weight"]
            elif first:
                total = allreduce(self.mesh.embedding_comm,
                                  first[0].embedding_grads[k]["wte.weight"], algorithm="naive")
            elif last:
                total = allreduce(self.mesh.embedding_comm, last[0].grads[k]["wte.weight"],
                                  algorithm="naive")
            else:
                continue
            for chunk in {id(c): c for c in first + last}.values():
                chunk.grads[k]["wte.weight"] = total.copy()

    def _sum_replicas(self):
        """Every gradient summed over the data-parallel replicas (step 4)."""
        if self.mesh.dp == 1:
            return
        algorithm = "naive" if self.deterministic else "auto"
        for chunk in self.chunks:
            for shard in chunk.grads:
                for name in sorted(shard):
                    shard[name] = allreduce(self.mesh.dp_comm, shard[name], algorithm=algorithm)

    def _loss(self, loss):
        """The global batch's loss on every rank: the last stage's, summed over replicas."""
        p = self.mesh.pp
        if self.mesh.pp_rank == p - 1:
            loss = float(allreduce(self.mesh.dp_comm, np.array([loss]), algorithm="naive")[0])
        return self.mesh.pp_comm.bcast(loss, root=p - 1) if p > 1 else loss

    def _squares(self):
        """{parameter: squared norm of its whole gradient} for the parameters this rank holds
        (wte counted on the first stage only)."""
        out = {}
        for chunk in self.chunks:
            grads = chunk.grads
            names = [n for n in sorted(grads[0]) if chunk.first or n != "wte.weight"]
            sharded = [n for n in names if is_sharded(n)]
            if sharded:
                parts = [np.array([float(np.vdot(g[n], g[n])) for n in sharded]) for g in grads]
                out.update(zip(sharded, chunk.model.tp.reduce_from_tp(parts).tolist()))
            out.update((n, float(np.vdot(grads[0][n], grads[0][n])))
                       for n in names if not is_sharded(n))
        return out

    def _clip(self):
        """Scale every gradient by min(1, max_norm / norm); returns the global norm (step 5)."""
        squares = {}
        for part in self.mesh.pp_comm.allgather(self._squares()):  # control data
            squares.update(part)
        norm = float(np.sqrt(sum(squares[n] for n in param_table(self.config))))
        if self.max_norm and norm > self.max_norm:
            scale = self.max_norm / (norm + 1e-6)
            for chunk in self.chunks:
                for shard in chunk.grads:
                    for g in shard.values():
                        g *= scale
        return norm

    def full_params(self, everywhere=False):
        """Every parameter in full on pp rank 0 of each replica (None elsewhere; on every
        rank with ``everywhere``): each stage's tensor-parallel pieces gathered, then the
        stages' dicts gathered over ``pp_comm`` (control data: a checkpoint, not a step)."""
        from ..models.checkpoint import full_params
        mine = {}
        for chunk in self.chunks:
            mine.update(full_params(chunk.model))
        if everywhere:
            every = self.mesh.pp_comm.allgather(mine)
        else:
            every = self.mesh.pp_comm.gather(mine, root=0)
            if self.mesh.pp_rank != 0:
                return None
        out = {}
        for part in every:
            out.update(part)
        return {name: out[name] for name in param_table(self.config)}

    def whole_model(self, **model_options):
        """The trained model, whole on every stage, tensor-parallel over ``tp_comm`` as
        before: for evaluation and generation (which this pipeline does not split)."""
        from ..models import GPT
        return GPT(self.config, self.full_params(everywhere=True), self.mesh.tp_comm,
                   **model_options)
