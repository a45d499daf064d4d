"""Pipeline-parallel inference: a language model's blocks on consecutive stages, prompts
pipelined as micro-batches, then generation with each stage's KV cache kept where its layers are
(GPipe's forward pass, Huang et al. 2019, sec. 2; Narayanan et al. 2021, sec. 2.2).

    stage = InferenceStage.from_gguf(gguf, mesh.pp_rank, mesh.pp, mesh.tp_comm)
    pipe = PipelineInference(stage, mesh.pp_comm)
    out = pipe.generate(prompts, max_new_tokens, micro_batches=4, stop_id=eos)  # every rank
    logits = pipe.forward(tokens, micro_batches=2)      # the last stage's ranks; None elsewhere

The batch. B prompts of one length T (a (B, T) array; prompts of different lengths would need
padding and a mask, which mpipar leaves out) are cut into m micro-batches of consecutive
sequences (``np.array_split`` sizes). Every micro-batch has its own KV cache on every stage, for
that stage's layers only.

The schedule. Every rank walks the same order, (step t, micro-batch i) for t = 0, 1, ... and
i = 0 .. m-1 within a step: step 0 is the prefill (the whole prompt, positions 0..T-1), step
t > 0 feeds back the token of step t-1 (position T+t-1). Stage k receives micro-batch i's
hidden states (b, T or 1, d) from stage k-1 (``p2p.irecv`` of a preallocated array, waited for
at once: that wait is the bubble), runs its blocks and posts ``p2p.isend`` to stage k+1 without
waiting. The last stage picks the next tokens (greedy: the distributed argmax over tp; sampled
for temperature > 0 from one generator seeded alike on its tp ranks, drawing row by row in the
serial order) and sends them, with one more number -- does micro-batch i go on? -- to every
other stage: the first needs them as its next input, the others to know when a micro-batch is
finished (every row has emitted ``stop_id``, or max_new_tokens are done), and so every rank
ends holding the whole output. Before working on (t, i), t > 0, a stage other than the last
waits for that message of (t-1, i).

Why this helps throughput and not latency: one micro-batch's step visits the stages one after
another, so one sequence keeps one stage busy at a time -- a bubble of (S-1)/S on S stages,
and a token takes as long as on one process (plus the messages). With m >= S micro-batches
in flight, stage k works on micro-batch i while stage k+1 works on i-1: every stage is busy
in the steady state and S micro-batches' tokens come out in the time of one. The prefill is
GPipe's forward: a bubble of (S-1)/(m+S-1) of its time. Stages are equal in layers, not in
work: the last also runs the LM head (SmolLM2's 49152 x 576, about eight of its layers per
token), so it sets the pace and the others wait even with many micro-batches.

Waiting. MPI's wait spins; ``poll`` (seconds) makes a waiting stage test and sleep instead,
which leaves its core to a working stage where ranks outnumber cores (``oversubscribed``).

Nothing is pickled: hidden states and tokens travel as buffers, tags per micro-batch, and every
check happens on every rank before the first message.
"""
import os
import time

from mpi4py import MPI
import numpy as np

from ..collectives.blocks import split as block_range
from ..models.attention import softmax
from . import p2p, schedule_formulas

__all__ = ["PipelineInference", "micro_batch_problem", "oversubscribed", "predicted_bubble",
           "MAX_MICRO_BATCHES"]

TAG_BASE = 1 << 13          #: clear of the collectives' tags and of the training pipeline's
MAX_MICRO_BATCHES = 4096    #: two tags per micro-batch stay below MPI's smallest TAG_UB (32767)


def oversubscribed(comm):
    """True where this rank's node runs more of ``comm``'s ranks than it has cores: there a
    waiting rank should sleep (``poll``), not spin in MPI's wait, or it slows a working one."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    ranks = node.Get_size()
    node.Free()
    return ranks > (os.cpu_count() or 1)


def micro_batch_problem(batch, m):
    """Why ``batch`` sequences cannot form ``m`` micro-batches, or None."""
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        return f"the number of micro-batches must be a whole number >= 1, not {m!r}"
    if m > batch:
        return f"{m} micro-batches need at least {m} sequences; there are {batch}"
    if m > MAX_MICRO_BATCHES:
        return f"at most {MAX_MICRO_BATCHES} micro-batches"
    return None


def predicted_bubble(n_stages, m, work=None):
    """The idle fraction of a stage with free messages: the prefill's (S-1)/(m+S-1) (GPipe's
    forward: the schedule formula, equal stages), and generation's steady state per stage.

    In generation the m micro-batches circle the S stages; one step of all of them takes
    P = max(m * max_k w_k, sum_k w_k) (the busiest stage's m visits, or one micro-batch's trip
    round the ring), so stage k idles 1 - m * w_k / P. ``work``: the stages' w_k (any unit;
    default equal), which gives (S-m)/S for m < S and 0 for m >= S."""
    work = [1.0] * n_stages if work is None else [float(w) for w in work]
    period = max(m * max(work), sum(work))
    return dict(prefill=float(schedule_formulas.predicted_bubble("gpipe", n_stages, m)),
                decode=max(0, n_stages - m) / n_stages,
                decode_per_stage=[1 - m * w / period for w in work])


class _Clock:
    """Seconds this rank spent blocked on pipeline messages, and in all, per phase: a rank's
    prefill runs from the start to the end of its own step-0 work, its generation from there
    (so a stage's wait for the first tokens, the prefill's drain, counts as generation's)."""

    def __init__(self, poll=None):
        self.t0, self.poll = time.perf_counter(), poll
        self.wait = {"prefill": 0.0, "decode": 0.0}
        self.prefill_end = None

    def blocked(self, phase, msg):
        t = time.perf_counter()
        p2p.wait(msg, self.poll)
        self.wait[phase] += time.perf_counter() - t
        return msg.buffer

    def figures(self, steps):
        end = time.perf_counter()
        split = self.prefill_end if self.prefill_end is not None else end
        out = {}
        for phase, seconds in (("prefill", split - self.t0), ("decode", end - split)):
            wait = self.wait[phase]
            out[phase] = dict(seconds=seconds, wait_seconds=wait, compute_seconds=seconds - wait,
                              bubble=wait / seconds if seconds > 0 else 0.0)
        out.update(seconds=end - self.t0, steps=steps)
        return out


class PipelineInference:
    """This rank's ``stage`` (an ``InferenceStage``) of a pipeline over ``pp_comm`` (the
    pipeline's ranks in stage order: its rank is the stage index)."""

    def __init__(self, stage, pp_comm, poll=None):
        if pp_comm.Get_size() != stage.n_stages or pp_comm.Get_rank() != stage.stage:
            raise ValueError(f"stage {stage.stage} of {stage.n_stages} on rank {pp_comm.Get_rank()} "
                             f"of a pipeline communicator of {pp_comm.Get_size()}")
        self.stage, self.comm, self.model = stage, pp_comm, stage.model
        self.k, self.n_stages = stage.stage, stage.n_stages
        self.d, self.dtype = stage.config.n_embd, stage.model.dtype
        self.poll = poll  #: None: MPI's waits (they spin); seconds: test, then sleep (p2p.wait)
        self.figures = None  #: after generate: times per phase, steps, micro-batches

    # --- the messages ------------------------------------------------------------------------

    def _recv_hidden(self, clock, phase, micro, buffer):
        return clock.blocked(phase, p2p.irecv(self.comm, buffer, self.k - 1, TAG_BASE + 2 * micro))

    def _send_hidden(self, micro, x):
        x = np.ascontiguousarray(x, self.dtype)
        return [p2p.isend(self.comm, x, self.k + 1, TAG_BASE + 2 * micro)]

    def _send_control(self, micro, tokens, more):
        msg = np.append(tokens.astype(np.int64), np.int64(more))
        return [p2p.isend(self.comm, msg, k, TAG_BASE + 2 * micro + 1)
                for k in range(self.n_stages - 1)]

    def _recv_control(self, clock, phase, micro, rows):
        buffer = np.empty(rows + 1, np.int64)
        msg = p2p.irecv(self.comm, buffer, self.n_stages - 1, TAG_BASE + 2 * micro + 1)
        control = clock.blocked(phase, msg)
        return control[:-1], bool(control[-1])

    def _check(self, tokens, m, extra=0):
        tokens = self.model.check_tokens(tokens, extra=extra)
        problem = micro_batch_problem(tokens.shape[0], m)
        if problem:
            raise ValueError(problem)
        B = tokens.shape[0]
        return tokens, [block_range(B, m, i) for i in range(m)]

    # --- a forward pass: the logits ------------------------------------------------------------

    def forward(self, tokens, micro_batches=1):
        """The logits (B, T, vocab) of ``tokens`` through the pipeline (GPipe's forward, no
        cache): on the last stage's ranks; None on the others."""
        tokens, rows = self._check(tokens, micro_batches)
        st, clock, sends, parts = self.stage, _Clock(self.poll), [], []
        for i, r in enumerate(rows):
            if st.first:
                x = st.embed(tokens[r])
            else:
                x = self._recv_hidden(clock, "prefill", i, np.empty((r.stop - r.start,
                                                                     tokens.shape[1], self.d), self.dtype))
            x = st.blocks(x)
            if st.last:
                parts.append(st.logits(st.final(x)))
            else:
                sends += self._send_hidden(i, x)
        p2p.waitall(sends)
        return np.concatenate(parts, axis=0) if st.last else None

    def logits_on_first(self, tokens, micro_batches=1):
        """``forward``'s logits, sent on from the last stage to the first (world rank 0 is there):
        on the first and the last stage's ranks; None in between."""
        logits = self.forward(tokens, micro_batches)
        if self.n_stages > 1 and (self.stage.first or self.stage.last):
            shape = (*np.shape(tokens), self.stage.config.vocab_size)
            if self.stage.first:
                logits = p2p.recv(self.comm, np.empty(shape, self.dtype), self.n_stages - 1, TAG_BASE - 1)
            else:
                p2p.send(self.comm, np.ascontiguousarray(logits, self.dtype), 0, TAG_BASE - 1)
        return logits

    # --- generation ----------------------------------------------------------------------------

    def generate(self, prompt, max_new_tokens, micro_batches=1, temperature=0.0, seed=0,
                 stop_id=None, on_tokens=None):
        """Extend ``prompt`` (B, T) by up to ``max_new_tokens`` tokens, the same on every rank.

        Greedy for temperature 0, else sampled (the generator seeded with ``seed``, drawing in
        the serial order). A micro-batch stops once each of its rows has produced ``stop_id``
        (kept in the output, as the serial ``generate`` keeps it); columns after a finished
        micro-batch's last step are ``stop_id``. Until a row's first ``stop_id`` the tokens are
        those of ``LanguageModel.generate`` on the whole batch. ``on_tokens(t, rows, ids)`` is
        called on every rank when step t's tokens of the rows ``rows`` (a slice) are known."""
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), not {temperature!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, not {max_new_tokens}")
        prompt, rows = self._check(prompt, micro_batches, extra=max_new_tokens)
        st, (B, T), n = self.stage, prompt.shape, max_new_tokens
        out = np.full((B, T + n), 0 if stop_id is None else stop_id, np.int64)
        out[:, :T] = prompt
        caches = [st.new_cache(r.stop - r.start, T + n) for r in rows]
        prefill_in = [np.empty((r.stop - r.start, T, self.d), self.dtype) for r in rows]
        decode_in = [np.empty((r.stop - r.start, 1, self.d), self.dtype) for r in rows]
        active, pending = [n > 0] * len(rows), [None] * len(rows)
        finished = np.zeros(B, bool)
        rng, clock, sends, flying = np.random.default_rng(seed), _Clock(self.poll), [], []
        columns = [0]  # generated columns known so far (the steps some micro-batch ran)

        def known(t, i, ids, more):  # step t's tokens of micro-batch i, on this rank
            r = rows[i]
            out[r, T + t] = ids
            active[i], columns[0] = more, max(columns[0], t + 1)
            if on_tokens is not None:
                on_tokens(t, r, ids)

        for t in range(n):
            phase, pos0 = ("prefill", 0) if t == 0 else ("decode", T + t - 1)
            for i, r in enumerate(rows):
                # a large message may move only while its sender is inside MPI (rendezvous):
                # testing the sends in flight lets the receivers' handshakes through
                flying = [msg for msg in flying if not p2p.test(msg)]
                if pending[i] is not None:  # whether i goes on, and (first stage) its input
                    known(pending[i], i, *self._recv_control(clock, phase, i, r.stop - r.start))
                    pending[i] = None
                if not active[i]:
                    continue
                if st.first:
                    x = st.embed(out[r, pos0:T + t], pos0)
                else:
                    x = self._recv_hidden(clock, phase, i, (prefill_in if t == 0 else decode_in)[i])
                x = st.blocks(x, pos0, caches[i])
                if not st.last:
                    posted, pending[i] = self._send_hidden(i, x), t
                    sends += posted
                    flying += posted
                    continue
                ids = self._pick(st.final(x[:, -1:]), temperature, rng)
                if stop_id is not None:
                    finished[r] |= ids == stop_id
                more = t + 1 < n and not finished[r].all()
                posted = self._send_control(i, ids, more)
                sends += posted
                flying += posted
                known(t, i, ids, more)
            if t == 0:
                clock.prefill_end = time.perf_counter()
            if not any(active) and all(w is None for w in pending):
                break
        for i, r in enumerate(rows):  # the last step's tokens
            if pending[i] is not None:
                known(pending[i], i, *self._recv_control(clock, "decode", i, r.stop - r.start))
        t_wait = time.perf_counter()
        p2p.waitall(sends)
        clock.wait["decode" if clock.prefill_end is not None else "prefill"] += time.perf_counter() - t_wait
        self.figures = dict(clock.figures(columns[0]), micro_batches=len(rows),
                            micro_batch_sizes=[r.stop - r.start for r in rows],
                            messages_sent=len(sends), bytes_sent=sum(s.buffer.nbytes for s in sends))
        return out[:, :T + columns[0]]

    def _pick(self, x, temperature, rng):
        """The next token of every row of x (b, 1, d): the distributed argmax, or a sample."""
        m = self.model
        if temperature == 0:
            return m.argmax_last(x)
        logits = m.tp.gather_from_tp(m.logit_parts(x[:, -1]), axis=-1)
        probs = softmax(logits.astype(np.float64) / temperature)
        return np.array([rng.choice(len(row), p=row) for row in probs], np.int64)
