"""Point-to-point messages of NumPy buffers between two ranks, each one recorded in the ledger.

    out = isend(comm, activation, dest=next_stage, tag=t)   # posted; returns at once
    inp = irecv(comm, buffer, source=prev_stage, tag=u)     # into a preallocated buffer
    ...                                                     # compute meanwhile
    waitall([out, inp])                                     # buffer holds the data now

This is what a pipeline's stages say to each other (Huang et al. 2019, GPipe;
Narayanan et al. 2021, sec. 2.2): an F step sends its output activation to the
next stage, a B step its input gradient to the previous one
(``mpipar.parallel.schedule_comm.transfers`` lists them, with a tag per message).
The calls are mpi4py's buffer methods ``comm.Isend`` / ``comm.Irecv`` on the
array's raw bytes (``[array, MPI.BYTE]``, through ``collectives.channel.Channel``),
so nothing is pickled and every dtype travels, bfloat16 included. MPI matches a
receive to a send by (communicator, source, tag), and two messages from the same
sender with the same tag arrive in the order they were sent (MPI 4.0, sec. 3.5).

Checks. Before posting, on this rank alone (no message): an ndarray, C-contiguous,
not of object dtype, writable for a receive, a peer rank in [0, size), a tag in
[0, MPI.TAG_UB]; each a ``ValueError`` on the calling rank only (its partner's
matching call would wait: derive every rank's messages from the same data, as
``schedule_comm`` does, and check that first). After a receive completes: the number of
bytes that arrived (``Status.Get_count(MPI.BYTE)``) must be the buffer's nbytes -- a
shorter message, or a longer one (MPI's truncation error), is a ``ValueError`` that
names both sizes, never silent garbage. Only bytes travel: a message of the same
byte count but another dtype or shape cannot be told apart without a second
message; sender and receiver must agree on both (the schedule and the model's
config give them).

The ledger. A message is recorded when this rank sees it complete (``wait``,
``waitall``, ``test``), in every ``CommLedger`` open at that moment; one never
waited for is never recorded, and a failed receive raises instead. Records come
from the one builder, ``ledger.record_call``, with op ``"send"`` or ``"recv"`` and
algorithm ``"p2p"``:

    send   nbytes = the message, bytes_sent = nbytes, messages 1, bytes_received 0
    recv   nbytes = the message, bytes_sent 0,       messages 0, bytes_received = nbytes
    both   steps 1, peer (the other rank), tag, world_size (the communicator's size)

so bytes_sent summed over every rank's records counts each byte once, at its
sender, and bytes_received the same bytes once, at the receiver: the two sums are
equal when every message is waited for, and a ledger's "sent" total never counts
a byte twice. ``predicted_seconds`` is the cost model's alpha + n*beta for one
message alone (``CostModel.predict("send", "p2p", p, n)``).

Time. Two numbers per message, both measured with ``time.perf_counter``:

    seconds            the time this rank spent *inside* calls for this message:
                       posting it (Isend/Irecv) plus waiting for it (Wait, Test) --
                       the communication it could not hide behind its computation.
    in_flight_seconds  from the post to the moment this rank saw it complete:
                       includes whatever the rank computed meanwhile, so it is an
                       upper bound on the transfer (it may have finished earlier).

``seconds`` is what the ledger sums (its "% comm" stays below 100 %: blocked time
never overlaps); a message that arrived during computation costs almost nothing
there, which is the point of posting early. ``waitall`` waits for its messages one
after another, in the order given: a message's wait is how much longer it took
after the ones before it, and the sum is the whole time blocked. Predictions of
messages in flight together overlap, so their sum can exceed the time taken.
"""
import time

from mpi4py import MPI
import numpy as np

from ..collectives.channel import Channel
from ..measure import ledger
from ..measure.cost_model import Algorithm, message

__all__ = ["Message", "isend", "irecv", "send", "recv", "wait", "waitall", "test", "completed_elsewhere",
           "ALGORITHMS"]

_TAG_UB = []  # MPI.TAG_UB, read once: the standard makes it the same on every communicator


def _tag_ub():
    if not _TAG_UB:
        _TAG_UB.append(int(MPI.COMM_WORLD.Get_attr(MPI.TAG_UB)))
    return _TAG_UB[0]


def _whole(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _problem(call, comm, array, peer, tag, receiving):
    """What is wrong with this call on this rank, or None (decided without a message)."""
    role = "source" if receiving else "dest"
    if not isinstance(array, np.ndarray):
        return f"{call}: expected a NumPy array, not {type(array).__name__}"
    if array.dtype.hasobject:
        return f"{call}: an object array holds pointers, not data; dtype {array.dtype} cannot travel"
    if not array.flags.c_contiguous:
        return f"{call}: the array must be C-contiguous (np.ascontiguousarray copies it)"
    if receiving and not array.flags.writeable:
        return f"{call}: the receive buffer is read-only"
    size = comm.Get_size()
    if not _whole(peer) or not 0 <= peer < size:
        return f"{call}: {role} must be a rank in [0, {size}), not {peer!r}"
    if not _whole(tag) or not 0 <= tag <= _tag_ub():
        return f"{call}: tag must be a whole number in [0, {_tag_ub()}] (MPI.TAG_UB), not {tag!r}"
    return None


class Message:
    """One posted message: its MPI request, the buffer it keeps alive until it completes,
    and what its ledger record needs. Hand it to :func:`wait`, :func:`waitall` or :func:`test`."""

    __slots__ = ("op", "channel", "request", "buffer", "peer", "tag", "posted_at", "seconds",
                 "in_flight_seconds", "done")

    def __init__(self, op, channel, request, buffer, peer, tag, posted_at, seconds):
        self.op, self.channel, self.request, self.buffer = op, channel, request, buffer
        self.peer, self.tag, self.posted_at, self.seconds = peer, tag, posted_at, seconds
        self.in_flight_seconds = None  #: set when this rank sees the message complete
        self.done = False

    def __repr__(self):
        way = "to" if self.op == "send" else "from"
        return (f"<{self.op} of {self.buffer.nbytes} bytes ({self.buffer.dtype} {self.buffer.shape}) "
                f"{way} rank {self.peer}, tag {self.tag}{', done' if self.done else ''}>")

    def wait(self):
        """Same as ``wait(self)``."""
        return wait(self)


def _post(op, comm, array, peer, tag):
    problem = _problem("isend" if op == "send" else "irecv", comm, array, peer, tag, op == "recv")
    if problem:
        raise ValueError(problem)
    ch = Channel(comm, trace=ledger.tracing(), tag=int(tag))
    ch.step()  # one message is one round
    t0 = time.perf_counter()
    request = ch.isend(array, int(peer)) if op == "send" else ch.irecv(array, int(peer))
    return Message(op, ch, request, array, int(peer), int(tag), t0, time.perf_counter() - t0)


def isend(comm, array, dest, tag=0):
    """Post a send of ``array``'s bytes to rank ``dest``; returns at once with a :class:`Message`.

    The array must not change until the message completes (the Message keeps it alive)."""
    return _post("send", comm, array, dest, tag)


def irecv(comm, buffer, source, tag=0):
    """Post a receive into the preallocated ``buffer`` from rank ``source``; returns a :class:`Message`.

    The buffer holds the data once :func:`wait` (or a true :func:`test`) says so."""
    return _post("recv", comm, buffer, source, tag)


def _complete(msg, status, t0, t1, error=None, completed_at=None):
    """Book-keeping once the request is done: times, the size check, the ledger record.
    ``completed_at``: when another thread saw it complete (default ``t1``)."""
    msg.seconds += t1 - t0
    msg.in_flight_seconds = (t1 if completed_at is None else completed_at) - msg.posted_at
    msg.done = True
    buf = msg.buffer
    where = f"recv from rank {msg.peer} with tag {msg.tag} into a {buf.dtype} buffer of shape {buf.shape}"
    if error is not None:
        if error.Get_error_class() == MPI.ERR_TRUNCATE:
            raise ValueError(f"{where}: the message is longer than the buffer's {buf.nbytes} bytes; "
                             f"sender and receiver disagree on the shape or dtype") from None
        raise error
    if msg.op == "recv":
        got = status.Get_count(MPI.BYTE)
        if got != buf.nbytes:
            raise ValueError(f"{where}: {got} bytes arrived but the buffer holds {buf.nbytes}; "
                             f"sender and receiver disagree on the shape or dtype")
    n = buf.nbytes
    ledger.record_call(msg.channel, msg.op, "p2p", buf.dtype, buf.size, n, msg.seconds,
                       peer=msg.peer, tag=msg.tag, bytes_received=n if msg.op == "recv" else 0,
                       in_flight_seconds=msg.in_flight_seconds)


def _advance(msg, block):
    """Wait for (``block``) or test ``msg``; True once it is complete."""
    if msg.done:
        return True
    status = MPI.Status()
    t0 = time.perf_counter()
    try:
        finished = msg.request.Wait(status) if block else msg.request.Test(status)
    except MPI.Exception as error:  # truncation: the request is complete, with an error
        _complete(msg, status, t0, time.perf_counter(), error)  # raises
    if not finished:
        msg.seconds += time.perf_counter() - t0
        return False
    _complete(msg, status, t0, time.perf_counter())
    return True


def wait(msg, poll=None):
    """Block until ``msg`` completes; returns its buffer (for a receive: the data).

    A second wait returns at once and records nothing more. Raises ``ValueError`` if a
    received message does not have the buffer's size. ``poll``: instead of MPI's wait, which
    spins, test every ``poll`` seconds and sleep in between, so a rank with nothing to do leaves
    its core to the others (more ranks than cores); the sleep counts as time waited."""
    if poll is None:
        _advance(msg, block=True)
    else:
        while not _advance(msg, block=False):
            t0 = time.perf_counter()
            time.sleep(poll)
            msg.seconds += time.perf_counter() - t0
    return msg.buffer


def test(msg):
    """True if ``msg`` has completed (recording it then), False if it is still in flight."""
    return _advance(msg, block=False)


def waitall(messages):
    """Wait for every message, in the order given; returns their buffers.

    Every message is completed even if one fails its size check, so nothing stays in
    flight; then the first such ``ValueError`` is raised."""
    errors = []
    for msg in messages:
        try:
            _advance(msg, block=True)
        except ValueError as e:
            errors.append(e)
    if errors:
        raise errors[0]
    return [msg.buffer for msg in messages]


def completed_elsewhere(msg, status, waited, completed_at):
    """Book-keeping of a message whose request another thread completed (a progress engine's,
    ``pipeline_engine``), called by the thread that posted it: ``status`` is the completed
    request's, ``waited`` the seconds this thread blocked for it (its ``seconds`` stay this
    thread's time inside calls and waits), ``completed_at`` the perf_counter() of completion.
    The size check and the ledger record happen here, on the calling thread."""
    if not msg.done:
        _complete(msg, status, 0.0, waited, completed_at=completed_at)
    return msg.buffer


def send(comm, array, dest, tag=0):
    """A blocking send: ``wait(isend(...))``. To send to this rank itself, post the
    receive first or use :func:`isend` (a large self-message waits for its receive)."""
    wait(isend(comm, array, dest, tag))


def recv(comm, buffer, source, tag=0):
    """A blocking receive into ``buffer``: ``wait(irecv(...))``; returns the buffer."""
    return wait(irecv(comm, buffer, source, tag))


#: the cost formulas, looked up by ``CostModel.predict("send" | "recv", "p2p", p, n)``;
#: ``run`` is the posting call (it takes a communicator, not a Channel as collectives do)
ALGORITHMS = {"send": {"p2p": Algorithm(isend, message)},
              "recv": {"p2p": Algorithm(irecv, message)}}
