"""The lessons' exercises: each check takes the function a student wrote, tests it, and says what
is wrong with it.

    from checks import check
    check("00_rotate", rotate)        # in the notebook, after the cell the student fills in

A stub that still raises NotImplementedError is "not done yet", not a failure. ``make test``
runs every notebook with the reference answers of ``lessons/solutions/`` put into the exercise
cells (cells tagged ``exercise``, named by their metadata) and ``MPIPAR_EXERCISES=strict`` set:
then every check must pass, and ``tests/lessons`` shows that each check fails on a planted wrong
answer. A check that needs MPI runs the student's function in a job of 1, 2, 3 and 4 ranks (its
source, ``inspect.getsource``, written into a script; 3 ranks catch what 2 hide).
"""
import inspect
import os
import tempfile
import textwrap

import numpy as np

CHECKS = {}
STRICT = "MPIPAR_EXERCISES"


def exercise(name):
    """Register a check: a function of the answer that returns a list of problems (empty: right)."""
    def register(fn):
        CHECKS[name] = fn
        return fn
    return register


def check(name, answer):
    """Test ``answer`` with the check called ``name``; print the verdict and return True if right."""
    strict = os.environ.get(STRICT) == "strict"
    try:
        problems = CHECKS[name](answer)
    except NotImplementedError:
        print(f"{name}: not done yet -- replace the NotImplementedError with your code, then run this again")
        if strict:
            raise
        return False
    if problems:
        print(f"{name}: not yet right --")
        for problem in problems:
            print(f"  * {problem}")
        if strict:
            raise AssertionError(f"{name}: " + "; ".join(problems))
        return False
    print(f"{name}: right")
    return True


# --- lesson 00: a rotation round the ring --------------------------------------------------

ROTATE_JOB = '''
import numpy as np
from mpi4py import MPI
from mpipar.launch import emit

{source}

comm = MPI.COMM_WORLD
rank, p = comm.Get_rank(), comm.Get_size()
rows = []
for k in (1, 2, 5):
    mine = np.arange(3, dtype=np.float64) + 10 * rank
    got = np.asarray({name}(comm, mine.copy(), k))
    rows.append((k, got.tolist()))
emit(comm.gather(rows))
'''


@exercise("00_rotate")
def rotate_check(rotate):
    """rotate(comm, x, k): every rank returns the array of the rank k places to its left."""
    _calls_or_raises(rotate, "rotate")
    problems = []
    script = ROTATE_JOB.format(source=_source(rotate), name=rotate.__name__)
    for p, data in run_in_jobs(script, (1, 2, 3, 4)):
        if isinstance(data, str):
            return problems + [data]
        for rank, rows in enumerate(data):
            for k, got in rows:
                want = (np.arange(3.0) + 10 * ((rank - k) % p)).tolist()
                if got != want:
                    came = f"rank {int(got[0] // 10)}'s" if got and got[0] % 10 == 0 else repr(got)
                    problems.append(f"p = {p}, k = {k}: rank {rank} returned {came} array, "
                                    f"not rank {(rank - k) % p}'s (the rank k places to its left)")
        if problems:
            return problems[:3]
    return problems


# --- lesson 02: uneven blocks -----------------------------------------------------------

@exercise("02_columns")
def columns_check(columns_of):
    """columns_of(n, p, r) -> (start, stop): rank r's block of n columns split over p ranks,
    as np.array_split cuts them (the first n mod p blocks one longer; a block may be empty)."""
    problems = []
    for n, p in [(8, 3), (10, 4), (768, 5), (2, 5), (0, 3), (7, 7), (12, 1)]:
        sizes = [len(b) for b in np.array_split(np.arange(n), p)]
        for r in range(p):
            want = (sum(sizes[:r]), sum(sizes[:r + 1]))
            got = tuple(int(v) for v in columns_of(n, p, r))
            if got != want:
                problems.append(f"n = {n}, p = {p}: rank {r} got columns {got}, want {want} "
                                f"(np.array_split: the first {n % p} block(s) have one column more)")
                break
        if len(problems) == 3:
            break
    return problems


# --- lesson 03: the distributed argmax ---------------------------------------------------

@exercise("03_argmax")
def argmax_check(combine):
    """combine(candidates) -> the global argmax, from each shard's (best value, global index) in
    rank order; on a tie the lowest index wins, as np.argmax's does."""
    rng = np.random.default_rng(0)
    problems = []
    cases = [np.array([3.0, 1.0, 3.0, 2.0]), np.array([0.0, 5.0, 5.0, 5.0, 1.0, 5.0]), np.full(7, 2.0)]
    cases += [rng.integers(0, 4, size=n).astype(np.float32) for n in (5, 9, 13)]  # ties galore
    cases += [rng.standard_normal(50).astype(np.float32)]
    for logits in cases:
        for p in (1, 2, 3, 4, 5):
            if p > len(logits):
                continue
            candidates = []
            for block in np.array_split(np.arange(len(logits)), p):  # uneven shards
                local = int(np.argmax(logits[block]))
                candidates.append((float(logits[block][local]), int(block[local])))
            got, want = combine(list(candidates)), int(np.argmax(logits))
            if got != want:
                problems.append(f"logits {logits.tolist()} on {p} shard(s): candidates {candidates} "
                                f"gave {got!r}, want {want} (the largest value; on a tie the lowest index)")
                if len(problems) == 3:
                    return problems
    return problems


# --- lesson 04: gradient buckets ----------------------------------------------------------

@exercise("04_buckets")
def buckets_check(buckets):
    """buckets(shapes, bucket_bytes) -> lists of names: float32 gradients in the order backward
    produces them, a bucket closed when the next gradient would take it over bucket_bytes, a
    gradient larger than that in a bucket of its own (GradBuckets' rule, DDP's)."""
    from mpi4py import MPI

    from mpipar.models import PRESETS
    from mpipar.models.params import param_shapes
    from mpipar.parallel.buckets import GradBuckets
    shapes = list(reversed(list(param_shapes(PRESETS["tiny"]).items())))  # last layer first
    cases = [(shapes, b) for b in (1, 512, 4096, 25 * 2**10, 10**9)]
    cases += [([("a", (10,)), ("b", (10,)), ("c", (10,))], 80), ([("a", (30,)), ("b", (1,))], 40),
              ([("a", (0,)), ("b", (5,)), ("c", (0,))], 8)]
    problems = []
    for shapes_, limit in cases:
        want = GradBuckets(MPI.COMM_SELF, shapes_, limit, overlap=False).buckets
        got = [list(b) for b in buckets(list(shapes_), limit)]
        if got != want:
            names = [n for n, _ in shapes_]
            short = names if len(names) <= 4 else names[:2] + ["..."]
            problems.append(f"{len(names)} gradients ({', '.join(short)}), bucket_bytes = {limit}: "
                            f"{len(got)} bucket(s) {_brief(got)}, want {len(want)}: {_brief(want)}")
            if len(problems) == 3:
                break
    return problems


def _brief(buckets):
    return "[" + ", ".join(f"{len(b)} name(s) from {b[0]!r}" if b else "[]" for b in buckets[:4]) + (
        ", ..." if len(buckets) > 4 else "") + "]"


# --- lesson 07: a pipeline schedule --------------------------------------------------------

SCHEDULE_P, SCHEDULE_M = 3, 4


def parse_schedule(rows, name="yours"):
    """A Schedule from one string per rank: 'F0 F1 B0 ...' (kind and micro-batch)."""
    from mpipar.parallel.schedules import Schedule, Step
    steps = [tuple(Step(tok[0], int(tok[1:])) for tok in row.split()) for row in rows]
    return Schedule(name, SCHEDULE_P, SCHEDULE_M, 1, tuple(steps))


@exercise("07_schedule")
def schedule_check(my_schedule):
    """my_schedule() -> one string per rank for p = 3, m = 4 that (1) completes, (2) takes no
    longer than 1F1B's (m + p - 1) * 3 units, (3) holds at most p - r micro-batches on rank r."""
    from mpipar.parallel.schedule_formulas import predicted_makespan
    from mpipar.parallel.schedule_sim import simulate
    rows = my_schedule()
    if not (isinstance(rows, (list, tuple)) and len(rows) == SCHEDULE_P
            and all(isinstance(r, str) for r in rows)):
        return [f"my_schedule() must return {SCHEDULE_P} strings, one per rank, not {rows!r}"]
    try:
        tl = simulate(parse_schedule(rows))
    except (ValueError, IndexError) as e:
        return [f"rule 1 broken -- {e}"]
    problems, limit = [], predicted_makespan("1f1b", SCHEDULE_P, SCHEDULE_M)
    if tl.makespan > limit:
        problems.append(f"rule 2 broken -- the step takes {tl.makespan} time units, more than {limit}")
    for r, held in enumerate(tl.peak_in_flight):
        if held > SCHEDULE_P - r:
            problems.append(f"rule 3 broken -- rank {r} holds {held} micro-batches at once, more than "
                            f"p - r = {SCHEDULE_P - r}")
    return problems


# --- helpers ------------------------------------------------------------------------------

def run_in_jobs(script, ranks, timeout=60):
    """Run ``script`` (the text of a job that emits its result) on each number of ``ranks``; yield
    (p, rank 0's data), or (p, a sentence saying how the job failed) and stop."""
    from mpipar import launch
    with tempfile.TemporaryDirectory(prefix="mpipar-exercise-") as tmp:
        path = os.path.join(tmp, "exercise.py")
        with open(path, "w") as f:
            f.write(script)
        for p in ranks:
            print(f"  running it on {p} rank(s) ...", flush=True)   # a few seconds a job
            job = launch.run(path, n=p, timeout=timeout, check=False)
            if job.returncode != 0:
                tail = (job.stdout + job.stderr).strip().splitlines()[-3:]
                yield p, f"on {p} rank(s) the job failed: " + " / ".join(tail)
                return
            yield p, job.data


def _source(fn):
    """The source of a function defined in a notebook cell or a module, dedented."""
    return textwrap.dedent(inspect.getsource(fn))


def _calls_or_raises(fn, name):
    """Call a stub the cheap way first: a NotImplementedError surfaces before any job starts."""
    try:
        fn(_NoComm(), np.zeros(1), 1)
    except NotImplementedError:
        raise
    except Exception:  # a real answer calls MPI, which the stand-in does not offer
        pass


class _NoComm:
    def __getattr__(self, name):
        raise AttributeError(name)


# the checks of lessons 01 and 05 (a ring's messages and roundings) and of 06 and 08 (who holds
# what, and how many bytes) live in their own files; importing them registers them
import checks_holdings  # noqa: E402,F401
import checks_rings  # noqa: E402,F401
