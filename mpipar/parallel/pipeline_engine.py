"""A pipeline's messages completed on a communication thread while the stage computes: the
executor's ``overlap="thread"`` (``pipeline_parallel.Pipeline``).

Why a thread. An MPI library moves a message only while some call is inside MPI on the
rank (MPICH and Open MPI have no progress thread by default). A small activation travels
eagerly: the sender's ``Isend`` copies it out and it is done. A large one uses the
rendezvous protocol: the sender announces it, the receiver answers once its ``Irecv`` is
posted, and only then do the bytes move -- each turn of that handshake happens inside
some MPI call on each side. So an activation posted right before the next micro-batch's
forward may sit on the sender until its next wait, while the next stage idles: the bubble
grows beyond GPipe's (p - 1) / (m + p - 1) (Huang et al. 2019) and 1F1B's (Narayanan et
al. 2021, sec. 2.2). The ``"poll"`` executor tests its sends between steps, which helps
only at those moments; here one thread per rank sits inside ``MPI_Waitany`` on every
message in flight for the whole step, so each handshake is answered at once, while the
main thread computes (NumPy's products release Python's GIL, mpi4py releases it in every
MPI call).

Who does what. The main thread posts every ``Isend`` and ``Irecv`` where the ``"poll"``
executor posts them (the same messages, buffers and tags: the results keep their bits)
and hands the message to :class:`MessageLoop`; the loop, one ``ProgressEngine`` job per
pipeline step (``run``), waits on all of them at once and marks each one complete. The main
thread blocks only for a receive, right before the step that needs it, and for the sends
at the end of the step. A new message must reach a thread that is already blocked in
``MPI_Waitany``: the main thread rings a doorbell, a one-byte message to itself on a
private duplicate of ``COMM_SELF`` whose receive is always among the requests waited for.

Each request is completed by the loop alone (two threads must never wait for the same
request); the book-keeping -- the size check and the ledger record, ``p2p.completed_elsewhere``
-- is done by the main thread when it claims the message, so every byte is recorded once,
in the posting thread's order, and a record's ``seconds`` is the main thread's time
blocked on the message (posting it plus waiting for it): the communication the stage could
not hide. ``in_flight_seconds`` ends when the loop saw it complete.

Deadlock. Sends never block the main thread and the loop waits on every message at once,
so the executor waits for exactly what the ``"poll"`` one waits for: ``schedule_sim``'s proof
that no step waits for a message never sent covers both. It needs MPI_THREAD_MULTIPLE (the
main thread posts and rings while the loop waits; the stage's tensor-parallel all-reduces
run meanwhile).

Errors. An exception on the loop's thread wakes every waiting claim; the claim re-raises
it as the engine's one RuntimeError (``ProgressEngine``), under ``python -m mpi4py`` the
end of the whole job, never a hang. The loop's thread spins in MPI: give each rank a
second core (``mpirun --map-by slot:PE=2``), or it competes with the stage's compute.
"""
import threading
import time

from mpi4py import MPI
import numpy as np

from . import p2p

BELL = 1  #: the doorbell's tag on the loop's own communicator


def wait_any(requests, status):
    """``MPI_Waitany``: the index of a completed request (one place, for tests to break)."""
    return MPI.Request.Waitany(requests, status)


class Claim:
    """One handed-over message: its completion as the loop saw it."""

    __slots__ = ("msg", "status", "completed_at", "event")

    def __init__(self, msg):
        self.msg, self.status, self.completed_at = msg, MPI.Status(), None
        self.event = threading.Event()


class MessageLoop:
    """Completes one pipeline step's messages on the engine's thread (see the module docstring).

        loop = MessageLoop(bell_comm)
        job = engine.submit(loop.serve, what="pipeline messages")
        claim = loop.hand_over(p2p.irecv(...))   # main thread, right after posting
        array = loop.claim(claim, job)           # blocks until it arrived
        loop.close(); job.wait()                 # after the last message was handed over

    ``bell_comm``: a duplicate of ``MPI.COMM_SELF`` that only this loop uses."""

    def __init__(self, bell_comm):
        self.bell_comm = bell_comm
        self._lock = threading.Lock()
        self._new, self._rung, self._closing = [], False, False
        self._claims = []   # every claim handed over, for waking them all on the way out
        self._bell_in, self._bell_out = np.zeros(1, np.uint8), np.ones(1, np.uint8)

    # --- the main thread -------------------------------------------------------------------------

    def hand_over(self, msg):
        """Give the posted ``msg`` to the loop; returns the :class:`Claim` to wait on."""
        claim = Claim(msg)
        self._give(claim)
        return claim

    def close(self):
        """No more messages: the loop ends once every one handed over has completed."""
        self._give(None)

    def _give(self, claim):
        with self._lock:
            if claim is None:
                self._closing = True
            else:
                self._new.append(claim)
            ring, self._rung = not self._rung, True
        if ring:  # one bell in flight at a time; the loop takes everything new when it rings
            self.bell_comm.Send([self._bell_out, MPI.BYTE], 0, BELL)

    def claim(self, claim, job):
        """Block until the loop completed ``claim``'s message; its buffer, checked and recorded
        in the ledger with this thread's blocked seconds. Re-raises an error of the loop's
        thread (``job``: the loop's engine job) as the engine's RuntimeError."""
        t0 = time.perf_counter()
        claim.event.wait()
        waited = time.perf_counter() - t0
        if claim.completed_at is None:  # woken because the loop ended without it
            job.wait()  # raises the thread's error
            raise RuntimeError(f"the pipeline's message loop ended before {claim.msg!r} completed")
        return p2p.completed_elsewhere(claim.msg, claim.status, waited, claim.completed_at)

    # --- the engine's thread ---------------------------------------------------------------------

    def serve(self):
        """The job: wait on the bell and every message in flight until closed and all done."""
        try:
            self._serve()
        finally:  # whatever happened, nobody stays blocked in claim()
            with self._lock:
                claims = self._claims + self._new
            for claim in claims:
                claim.event.set()

    def _serve(self):
        owned = []
        bell = self.bell_comm.Irecv([self._bell_in, MPI.BYTE], 0, BELL)
        while owned or bell is not None:
            requests = [c.msg.request for c in owned] + ([bell] if bell is not None else [])
            status = MPI.Status()
            index = wait_any(requests, status)
            done_at = time.perf_counter()
            if index == len(owned):  # the bell: take what was handed over
                with self._lock:
                    new, self._new, self._rung = self._new, [], False
                    closing = self._closing
                    self._claims += new
                owned += new
                bell = None if closing else self.bell_comm.Irecv([self._bell_in, MPI.BYTE], 0, BELL)
            else:
                claim = owned.pop(index)
                claim.status, claim.completed_at = status, done_at
                claim.event.set()


class ThreadMessages:
    """What ``Pipeline.run`` does with its messages under ``overlap="thread"``: hand each to
    a :class:`MessageLoop` running on ``engine``; claim receives before their steps and the
    sends at the end."""

    def __init__(self, engine, bell_comm, what="the pipeline's messages"):
        self.loop = MessageLoop(bell_comm)
        self.job = engine.submit(self.loop.serve, what=what)
        self.sends = []

    def received(self, msg):
        return self.loop.hand_over(msg)

    def wait(self, claim):
        return self.loop.claim(claim, self.job)

    def sent(self, messages):
        self.sends += [self.loop.hand_over(msg) for msg in messages]

    def between_steps(self):
        """Nothing to do: the loop's thread keeps the messages moving."""

    def finish(self):
        self.loop.close()
        for claim in self.sends:
            self.loop.claim(claim, self.job)
        self.job.wait()
