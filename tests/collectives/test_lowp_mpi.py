"""All-reduce with a 16-bit wire (mpipar.collectives.lowp) on the ranks of MPI.COMM_WORLD.

Run under mpirun at 1..4 ranks. As in test_results_mpi, a test collects what
went wrong on this rank and asserts on the list gathered from every rank, so all
ranks pass or fail together.

The error bounds, derived (u16 = 2^-11 float16, 2^-8 bfloat16; u32 = 2^-24;
S = sum_r |x_r| elementwise, s = sum_r x_r; to first order in u):

* ring, per_hop. Block b starts on rank b+1 and travels p-1 hops round the ring.
  At each hop the sender rounds its float32 partial sum S_k (k terms) to the wire
  (relative error <= u16) and the receiver adds its own term in float32 (<= u32);
  the finished block is rounded to the wire once more and the allgather only
  copies it. That is p roundings to 16 bits of partial sums and p-1 float32
  additions, and every partial sum satisfies |S_k| <= S, so
      |y - s| <= p u16 S + (p-1) u32 S.
* recursive doubling, per_hop. Each round both partners round their own partial
  sum and add the two in float32; folding a non-power-of-two p in costs one more
  such round; the result is rounded once at the end. With L = ceil(lg p) rounds:
      |y - s| <= (L+1) u16 S + L u32 S      (<= the ring's bound: L+1 <= p).
* ring, once. The reduce-scatter runs in float32 (|s^ - s| <= (p-1) u32 S,
  Higham 2002 eq. 4.4), then the finished block is rounded once (<= u16 |s^|):
      |y - s| <= u16 |s| + (p-1) u32 S.
  Near cancellation (|s| << S) this is far smaller than per_hop's p u16 S.

The exact first-order constants are exceeded only by second-order terms: a
product of k factors (1 + delta), |delta| <= u, differs from 1 by at most
(1+u)^k - 1 = k u (1 + (k-1) u / 2 + ...), i.e. by < 1% more than k u for
k <= 4 and u <= 2^-8; the tests allow a factor 1.01 for that. float16 also has
subnormals below 2^-14, where rounding is absolute (<= 2^-25 per rounding), so
each 16-bit rounding adds 2^-25 to the bound (2^-134 for bfloat16).

Bytes (all ranks together, n elements, p > 1): in a ring reduce-scatter every
block travels p-1 hops, so the ranks send (p-1) n elements; the ring allgather
sends another (p-1) n. A float32 ring moves 8 (p-1) n bytes; per_hop sends both
phases as 2-byte elements: 4 (p-1) n = 1/2; once sends the reduce-scatter in
4-byte and the allgather in 2-byte elements: 6 (p-1) n = 3/4.
"""
import itertools
import math
import zlib

from helpers import all_ranks_ok, first_ranks
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.collectives import allreduce
from mpipar.collectives.lowp import LOWP_ALGORITHMS, ROUNDINGS, WIRE, allreduce_lowp, problems
from mpipar.measure import numerics
from mpipar.measure.ledger import CommLedger
from mpipar.models import GPT
from mpipar.models.checkpoint import load_model

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
P, RANK = COMM.Get_size(), COMM.Get_rank()
U16 = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY16 = {"float16": 2.0**-25, "bfloat16": 2.0**-134}  # absolute error of a subnormal rounding
U32 = 2.0**-24
SLACK = 1.01
SIZES = sorted({0, 1, max(P - 1, 1), P, 10_007})
COMBOS = [(w, r, a) for w, r, a in itertools.product(("float16", "bfloat16"), ROUNDINGS, LOWP_ALGORITHMS)
          if problems(w, r, a) is None]
IDS = ["-".join(c) for c in COMBOS]


def sample(key, n, kind="normal", comm=COMM):
    """This rank's float32 input, different on every rank.

    normal: standard normal; scaled: normal times 10^uniform(-3, 3) (many binades,
    float16 subnormals included); cancel: the same vector with alternating signs
    on the ranks plus small noise (|s| << S where p is even); positive: uniform(0.5, 1.5).
    """
    rank = comm.Get_rank()
    rng = np.random.default_rng([zlib.crc32(repr(key).encode()), rank])
    common = np.random.default_rng(zlib.crc32(repr(key).encode())).standard_normal(n)
    x = {"normal": lambda: rng.standard_normal(n),
         "scaled": lambda: rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n),
         "cancel": lambda: (-1) ** rank * common + 1e-3 * rng.standard_normal(n),
         "positive": lambda: rng.uniform(0.5, 1.5, n)}[kind]()
    return x.astype(np.float32)


def exact_sums(x, comm=COMM):
    """(s, S): the sum and the sum of |x| over ranks, elementwise, as float64 (math.fsum:
    correctly rounded, so within u64 of exact -- far below every bound here)."""
    cols = np.array(comm.allgather(x), np.float64).T
    return (np.array([math.fsum(c) for c in cols]), np.array([math.fsum(np.abs(c)) for c in cols]))


def bound(wire, rounding, algorithm, p, s, S):
    """The elementwise error bound derived in the module docstring (times SLACK)."""
    u, tiny = U16[wire], TINY16[wire]
    if p == 1:  # nothing travels: the input comes back unrounded
        return np.zeros_like(S)
    if rounding == "once":
        return SLACK * (u * np.abs(s) + (p - 1) * U32 * S) + tiny
    rounds = p if algorithm == "ring" else math.ceil(math.log2(p)) + 1
    return SLACK * (rounds * u + (rounds - 1) * U32) * S + rounds * tiny


@pytest.mark.parametrize("wire,rounding,algorithm", COMBOS, ids=IDS)
def test_ranks_agree_and_error_within_the_derived_bound(wire, rounding, algorithm):
    errors = []
    for n, kind in itertools.product(SIZES, ("normal", "scaled", "cancel")):
        x = sample((wire, rounding, algorithm, n, kind), n, kind)
        before = x.copy()
        y = allreduce_lowp(COMM, x, wire, rounding, algorithm)
        name = f"n={n} {kind}"
        if y.dtype != np.float32 or y.shape != x.shape:
            errors.append(f"{name}: got {y.dtype}{y.shape}, want float32{x.shape}")
            continue
        if not numerics.ranks_agree(COMM, y):
            errors.append(f"{name}: ranks disagree")
        if not numerics.bitwise_equal(x, before):
            errors.append(f"{name}: the input was modified")
        s, S = exact_sums(x)
        err, b = np.abs(y.astype(np.float64) - s), bound(wire, rounding, algorithm, P, s, S)
        if np.any(err > b):
            i = int(np.argmax(err - b))
            errors.append(f"{name}: error {err[i]:.3g} > bound {b[i]:.3g} (s={s[i]:.3g}, S={S[i]:.3g})")
    all_ranks_ok(errors)


def emulate(stack, wire, rounding, algorithm):
    """The sum of the rows of ``stack`` (p, n) as the algorithm forms it, on one process."""
    w = WIRE[wire]
    rnd = lambda v: v.astype(w).astype(np.float32)  # noqa: E731
    p, (n,) = len(stack), stack.shape[1:]
    if p == 1:
        return stack[0].copy()
    if algorithm == "ring":  # every element of block b: ranks b+1, b+2, ..., b (mod p)
        out = np.empty(n, np.float32)
        for b, part in enumerate(np.array_split(np.arange(n), p)):
            acc = stack[(b + 1) % p, part]
            for k in range(2, p + 1):
                acc = (rnd(acc) if rounding == "per_hop" else acc) + stack[(b + k) % p, part]
            out[part] = acc
        return rnd(out)
    q = 1 << (p.bit_length() - 1)  # recursive doubling: fold the extras in, then pairs
    parts = [rnd(stack[r]) + rnd(stack[r + q]) if r + q < p else stack[r] for r in range(q)]
    while len(parts) > 1:
        parts = [rnd(a) + rnd(b) for a, b in zip(parts[::2], parts[1::2])]
    return rnd(parts[0])


@pytest.mark.parametrize("wire,rounding,algorithm", COMBOS, ids=IDS)
def test_bitwise_equal_to_a_serial_emulation(wire, rounding, algorithm):
    """The rounding sequence of the docstring, replayed on one process, gives the same bits."""
    errors = []
    for n in SIZES:
        x = sample(("emulate", wire, rounding, algorithm, n), n)
        y = allreduce_lowp(COMM, x, wire, rounding, algorithm)
        want = emulate(np.array(COMM.allgather(x)), wire, rounding, algorithm)
        if not numerics.bitwise_equal(y, want):
            errors.append(f"n={n}: {numerics.max_ulp(y, want):.0f} ULP from the emulation")
    all_ranks_ok(errors)


def sent_by_all(fn, *args, **kwargs):
    """Bytes every rank together sent in ``fn(COMM, *args, **kwargs)``, and this rank's ledger."""
    with CommLedger() as led:
        fn(COMM, *args, **kwargs)
    return COMM.allreduce(sum(r["bytes_sent"] for r in led.records)), led


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 10_007])
def test_bytes_half_and_three_quarters_of_the_float32_ring(n):
    x = sample(("bytes", n), n)
    f32_ring = sent_by_all(allreduce, x, algorithm="ring")[0]
    f32_rd = sent_by_all(allreduce, x, algorithm="recursive_doubling")[0]
    assert f32_ring == (8 * (P - 1) * n if P > 1 else 0)
    for wire in U16:
        per_hop, led = sent_by_all(allreduce_lowp, x, wire, "per_hop", "ring")
        once = sent_by_all(allreduce_lowp, x, wire, "once", "ring")[0]
        rd = sent_by_all(allreduce_lowp, x, wire, "per_hop", "recursive_doubling")[0]
        assert 2 * per_hop == f32_ring, (wire, per_hop, f32_ring)
        assert 4 * once == 3 * f32_ring, (wire, once, f32_ring)
        assert 2 * rd == f32_rd, (wire, rd, f32_rd)
        (record,) = led.records
        assert record["op"] == "allreduce" and record["nbytes"] == 4 * n
        if P > 1:
            assert (record["comm_dtype"], record["rounding"]) == (wire, "per_hop")
            assert list(led.totals()) == [("allreduce", f"ring {wire}/per_hop")]


def test_ledger_labels_each_setting():
    x = sample("labels", 64)
    with CommLedger() as led:
        for wire, rounding, algorithm in COMBOS:
            allreduce_lowp(COMM, x, wire, rounding, algorithm)
        allreduce_lowp(COMM, x, "float32", "per_hop", "ring")
    want = {("allreduce", f"{a} {w}/{r}") for w, r, a in COMBOS} | {("allreduce", "ring")}
    if P == 1:  # nothing travels: every call is an ordinary 1-rank allreduce, 0 bytes
        want = {("allreduce", a) for a in ("ring", "recursive_doubling")}
    assert set(led.totals()) == want
    assert all(g["bytes_sent"] == 0 for g in led.totals().values()) == (P == 1)


@pytest.mark.parametrize("wire", list(U16))
def test_per_hop_error_grows_with_p_and_once_does_not(wire):
    """On sub-communicators of 2..P ranks, inputs without cancellation (s = S): rounding
    once stays within u16 S whatever p; per hop the mean error grows with p and the
    largest exceeds anything a single rounding can give. Fixed seeds: deterministic."""
    if P < 2:
        pytest.skip("needs 2 ranks")
    means, errors = {}, []
    for k in range(2, P + 1):
        with first_ranks(k) as sub:
            if sub == MPI.COMM_NULL:
                continue
            x = sample(("growth", wire), 20_000, "positive", comm=sub)
            s, S = exact_sums(x, sub)
            for rounding in ("per_hop", "once"):
                e = np.abs(allreduce_lowp(sub, x, wire, rounding, "ring") - s) / (U16[wire] * S)
                means[k, rounding] = e.mean()
                if rounding == "once" and e.max() > SLACK * (1 + (k - 1) * U32 / U16[wire]):
                    errors.append(f"p={k} once: {e.max():.3f} u16 S")
                if rounding == "per_hop" and not e.max() > 1:
                    errors.append(f"p={k} per_hop: largest error {e.max():.3f} u16 S, not > 1")
    means = COMM.bcast(means, root=0)
    for k in range(3, P + 1):
        if not means[k, "per_hop"] > means[k - 1, "per_hop"]:
            errors.append(f"per_hop mean error at p={k} {means[k, 'per_hop']:.4f} <= at p={k - 1}")
    all_ranks_ok(errors)


def test_invalid_settings_raise_before_any_message():
    x = np.ones(8, np.float32)
    cases = {("bfloat16", "once", "recursive_doubling"): "rounding once needs the ring",
             ("float16", "per_hop", "tree"): "a float16 wire needs algorithm ring or recursive_doubling",
             ("bfloat16", "per_hop", "mpi"): "not 'mpi'",
             ("float8", "per_hop", "ring"): "comm dtype 'float8': choose from float32, float16, bfloat16",
             ("float16", "twice", "ring"): "rounding 'twice': choose from per_hop, once"}
    with CommLedger() as led:
        for (wire, rounding, algorithm), message in cases.items():
            with pytest.raises(ValueError, match=message):
                allreduce_lowp(COMM, x, wire, rounding, algorithm)
    assert led.records == []
    config, params, _ = load_model()
    with pytest.raises(ValueError, match="deterministic mode reduces in float32"):
        GPT(config, params, COMM, algorithm="ring", deterministic=True, comm_dtype="bfloat16")
    with pytest.raises(ValueError, match="bfloat16 wire needs algorithm ring or recursive_doubling"):
        GPT(config, params, COMM, algorithm="auto", comm_dtype="bfloat16")
    COMM.Barrier()


@pytest.mark.parametrize("rounding,algorithm", [c[1:] for c in COMBOS if c[0] == "bfloat16"],
                         ids=[f"{r}-{a}" for w, r, a in COMBOS if w == "bfloat16"])
def test_bfloat16_gpt_answers_like_the_serial_model(rounding, algorithm):
    """The shipped addition model with every reduction and logit gather in bfloat16 writes
    the same answers as the float32 model on one process, and every rank the same tokens
    (on as many ranks as the model has heads to split)."""
    config, params, task = load_model()
    prompts = task.prompts(task.heldout_pairs()[:32])
    errors, k = [], min(P, config.n_head)
    with first_ranks(k) as comm:
        if comm != MPI.COMM_NULL:
            model = GPT(config, params, comm, algorithm=algorithm, comm_dtype="bfloat16", rounding=rounding)
            with CommLedger() as led:
                got = model.generate(prompts, task.answer_len)
            want = GPT(config, params, MPI.COMM_SELF).generate(prompts, task.answer_len)
            if not np.array_equal(got, want):
                differ = int((got != want).any(1).sum())
                errors.append(f"{differ} of {len(prompts)} answers differ from serial")
            if not numerics.ranks_agree(comm, got):
                errors.append("ranks disagree on the tokens")
            labels = {alg for _, alg in led.totals()}
            if k > 1 and f"{algorithm} bfloat16/{rounding}" not in labels:
                errors.append(f"no bfloat16 reductions in the ledger: {sorted(labels)}")
    all_ranks_ok(errors)
