"""Pipeline parallelism: a GPT-2's layers on different ranks, micro-batches flowing through
them in the order a schedule says (GPipe, 1F1B, interleaved 1F1B, ZB-H1: ``schedules``).

    pipe = Pipeline(config, params, pp_comm, tp_comm, make_schedule("1f1b", p, m))
    result = pipe.run(micro_batches)   # every rank calls it with the same micro-batches

The executor is the schedule's data run literally: rank r walks ``schedule.steps[r]``; a
step first receives what ``schedule_comm.transfers`` says it needs (a point-to-point
``Irecv`` of a preallocated array, waited for: the wait is the rank's bubble), computes
(forward, backward, or the weight gradients of a split backward), then posts the ``Isend`` of
its result and goes on without waiting for it; the sends are completed at the end of the step.

An MPI library moves a message only while a rank is inside MPI (a large one, by the
rendezvous protocol, only while both are), so ``overlap`` says what keeps them moving -- the
same names as data parallelism's (``buckets.MODES``):

* ``"poll"`` (the default): the receives of the next ``receives_ahead`` receiving steps are
  posted early (a message that arrives finds its buffer), and the sends in flight are tested
  before every step.
* ``"none"``: neither; each receive is posted when its step comes, and messages move only in
  the waits.
* ``"thread"``: the same posts as ``"poll"``, completed by a communication thread that sits
  in ``MPI_Waitany`` while the stage computes (``pipeline_engine``; MPI_THREAD_MULTIPLE).

Measured with Open MPI on 16 cores (``bench pp``, p = 4, m = 16): 1F1B's bubble 0.25 with
none, 0.51 with tests alone, 0.17 with poll (the formula: 0.16); GPipe's 0.60, 0.39, 0.29. All
modes send the same messages and compute the same things: their results have the same bits.

Sends never block, and the simulator (``schedule_sim``) has proved that no
rank waits for a message that is never sent, so the executor cannot deadlock.

Every message is an activation or a gradient of one micro-batch, (b, T, d) in the model's
dtype: the receiver knows its shape from the micro-batch, so nothing but the array travels,
and ``p2p`` records each one in the ledger. Rank r's chunk c is model stage c * p + r
(Narayanan et al. 2021, sec. 2.2); where consecutive stages live on one rank (p = 1) the
array is handed over in memory.
"""
import time

from mpi4py import MPI
import numpy as np

from ..collectives.progress import ProgressEngine, thread_level_problem
from . import p2p
from .buckets import overlap_mode
from .pipeline_engine import ThreadMessages
from .pipeline_stage import PipelineStage, stage_problem
from .schedule_comm import transfers
from .schedules import stage_of

TAG_BASE = 1 << 12  # pipeline messages' tags start here, clear of the collectives' own
#: receives posted before they are needed (each into its own buffer of one micro-batch)
RECEIVES_AHEAD = 8


class Pipeline:
    """This rank's chunks of a pipeline-parallel GPT-2 (``schedule.v`` of them, model stages
    rank, rank + p, ...), each tensor-parallel over ``tp_comm``, and the schedule that runs
    them over ``pp_comm`` (the pipeline's ranks in stage order). ``overlap``: "poll", "none" or
    "thread" (module docstring); with "thread" the messages are completed on ``engine``, a
    ``ProgressEngine`` (one is started, and stopped by ``close()``, if none is given)."""

    def __init__(self, config, params, pp_comm, tp_comm, schedule, receives_ahead=RECEIVES_AHEAD,
                 overlap="poll", engine=None, **model_options):
        p = pp_comm.Get_size()
        if schedule.p != p:
            raise ValueError(f"the schedule is for {schedule.p} pipeline ranks, the pipeline "
                             f"communicator has {p}")
        self.overlap = overlap_mode(overlap)
        problem = stage_problem(config.n_layer, schedule.n_stages) or (
            thread_level_problem() if self.overlap == "thread" and engine is None else None)
        if problem:
            raise ValueError(problem)
        self.config, self.comm, self.schedule = config, pp_comm, schedule
        self.rank = pp_comm.Get_rank()
        self.chunks = [PipelineStage(config, params, stage_of(p, self.rank, c), schedule.n_stages,
                                     tp_comm, split=schedule.split_backward, **model_options)
                       for c in range(schedule.v)]
        self.dtype = self.chunks[0].model.dtype
        self.receives_ahead = receives_ahead if self.overlap != "none" else 0
        self._own_engine = self.overlap == "thread" and engine is None
        self.engine = ProgressEngine() if self._own_engine else engine
        # the doorbell of the thread's message loop: a communicator only it listens on
        self._bell = MPI.COMM_SELF.Dup() if self.overlap == "thread" else None

    def close(self):
        """Stop the engine this pipeline started (thread mode), free the doorbell's communicator."""
        if self._own_engine:
            self.engine.close()
            self._own_engine = False
        if self._bell is not None:
            self._bell.Free()
            self._bell = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _shape(self, micro_batches, micro):
        inputs = micro_batches[micro][0]
        return (inputs.shape[0], inputs.shape[1], self.config.n_embd)

    def run(self, micro_batches):
        """One training step's forward and backward over ``micro_batches``, a list of
        (inputs, targets, weights), the same on every rank. Returns the step's record:
        ``loss`` (the last stage's sum, else None), ``timeline`` (one dict per step: kind,
        micro, chunk, start, compute_start, end, seconds since the run began), ``wait_seconds``,
        ``compute_seconds``, ``peak_in_flight`` and ``peak_activation_bytes``. The gradients
        are each chunk's ``grads`` (and ``embedding_grads`` on the first stage)."""
        if len(micro_batches) != self.schedule.m:
            raise ValueError(f"the schedule has {self.schedule.m} micro-batches, got "
                             f"{len(micro_batches)}")
        for chunk in self.chunks:
            chunk.reset()
        local, timeline = {}, []
        messages = (ThreadMessages(self.engine, self._bell) if self.overlap == "thread"
                    else MainMessages(self.overlap == "poll"))
        peak_in_flight = peak_bytes = 0
        steps = self.schedule.steps[self.rank]
        plans = [transfers(self.schedule, self.rank, step) for step in steps]
        receiving = [k for k, (receives, _) in enumerate(plans) if receives]
        posted = {}
        t_run = time.perf_counter()
        for k, step in enumerate(steps):
            messages.between_steps()
            for j in [j for j in receiving if j >= k][:1 + self.receives_ahead]:
                if j not in posted:
                    posted[j] = messages.received(
                        self._post_receive(plans[j][0], micro_batches, steps[j]))
            chunk = self.chunks[step.chunk]
            receives, planned = plans[k]
            t0 = time.perf_counter()
            given = self._receive(messages, posted.pop(k, None), step, chunk, local)
            t1 = time.perf_counter()
            inputs, targets, weights = micro_batches[step.micro]
            if step.kind == "F":
                out = chunk.forward(step.micro, inputs if chunk.first else given, targets, weights)
                peak_in_flight = max(peak_in_flight, sum(c.in_flight() for c in self.chunks))
                peak_bytes = max(peak_bytes, sum(c.activation_bytes() for c in self.chunks))
                if not chunk.last:
                    messages.sent(self._send(planned, step, out, "activation", chunk.stage + 1, local))
            elif step.kind == "B":
                out = chunk.backward(step.micro, None if chunk.last else given)
                if not chunk.first:
                    messages.sent(self._send(planned, step, out, "gradient", chunk.stage - 1, local))
            else:
                chunk.weights(step.micro)
            t2 = time.perf_counter()
            timeline.append(dict(kind=step.kind, micro=step.micro, chunk=step.chunk,
                                 start=t0 - t_run, compute_start=t1 - t_run, end=t2 - t_run))
        messages.finish()
        last = [c for c in self.chunks if c.last]
        wait = sum(t["compute_start"] - t["start"] for t in timeline)
        return dict(loss=last[0].loss if last else None, timeline=timeline,
                    seconds=time.perf_counter() - t_run, wait_seconds=wait,
                    compute_seconds=sum(t["end"] - t["compute_start"] for t in timeline),
                    peak_in_flight=peak_in_flight, peak_activation_bytes=peak_bytes)

    def _post_receive(self, receives, micro_batches, step):
        """Post the Irecv of ``step``'s one message into a new buffer of its micro-batch's shape."""
        (transfer,) = receives
        buffer = np.empty(self._shape(micro_batches, step.micro), self.dtype)
        return p2p.irecv(self.comm, buffer, transfer.src, TAG_BASE + transfer.tag)

    def _receive(self, messages, message, step, chunk, local):
        """The array ``step`` needs from another stage: its posted receive waited for, or the
        array handed over in memory by a stage on this rank."""
        if step.kind == "W" or (step.kind == "F" and chunk.first) or (step.kind == "B" and chunk.last):
            return None
        if message is None:  # the neighbouring stage is on this rank
            what = "activation" if step.kind == "F" else "gradient"
            return local.pop((what, chunk.stage, step.micro))
        return messages.wait(message)

    def _send(self, sends, step, array, what, to_stage, local):
        """Post ``step``'s planned ``sends`` of ``array`` (or keep it for a stage on this rank)."""
        if not sends:
            local[(what, to_stage, step.micro)] = array
            return []
        array = np.ascontiguousarray(array, self.dtype)
        return [p2p.isend(self.comm, array, t.dst, TAG_BASE + t.tag) for t in sends]


class MainMessages:
    """``overlap="poll"`` or ``"none"``: the main thread completes every message. With ``poll``
    the sends in flight are tested between steps: a large message moves only while its sender
    is inside MPI (rendezvous), and a test lets the receiver's handshake through."""

    def __init__(self, poll):
        self.poll, self.sends = poll, []

    def received(self, msg):
        return msg

    def wait(self, msg):
        return p2p.wait(msg)

    def sent(self, messages):
        self.sends += messages

    def between_steps(self):
        if self.poll:
            self.sends = [msg for msg in self.sends if not p2p.test(msg)]

    def finish(self):
        p2p.waitall(self.sends)
