"""The exercises on who holds what, and how many bytes (lessons 06, 08 and 09), registered in checks.py.

06_kv_heads: which key/value heads a rank of a tensor-parallel split of a grouped-query attention
must hold, against mpipar's parameter table (``params.owned``) for SmolLM2's 9 / 3 heads and for
other groupings.

08_memory_budget: a rank's bytes of parameters, gradients and AdamW moments under dp x tp x pp,
against the parameter table (``params.shard_index`` of every parameter ``stage_names`` gives a stage).

09_zero1: ZeRO-1's step on p emulated ranks (each a block of the moments), bitwise against AdamW on
the whole gradient summed in rank order.
"""
from types import SimpleNamespace

from checks import exercise
import numpy as np

# --- lesson 06: grouped-query heads over p ranks -------------------------------------------

KV_CASES = [(9, 3), (12, 4), (8, 2), (32, 8), (6, 6), (4, 1), (15, 5)]   # (query heads, kv heads)


@exercise("06_kv_heads")
def kv_heads_check(kv_heads_of):
    """kv_heads_of(n_head, n_kv_head, p, r) -> (start, stop): the key/value heads rank r's query
    heads read, when the n_head query heads are cut as np.array_split cuts them and query head h
    reads key/value head h // (n_head / n_kv_head)."""
    from mpipar.models.params import owned
    problems = []
    for n_head, n_kv_head in KV_CASES:
        config = SimpleNamespace(n_head=n_head, n_kv_head=n_kv_head, head_dim=64, n_inner=1, vocab_size=1)
        for p in range(1, n_head + 1):
            for r in range(p):
                want = owned(config, "kv_heads", p, r)
                got = tuple(int(v) for v in kv_heads_of(n_head, n_kv_head, p, r))
                if got != (want.start, want.stop):
                    heads = owned(config, "heads", p, r)
                    problems.append(
                        f"n_head = {n_head}, n_kv_head = {n_kv_head}, p = {p}: rank {r} got kv heads "
                        f"{got}, want {(want.start, want.stop)} -- its query heads {heads.start}..."
                        f"{heads.stop - 1} read kv heads {want.start}...{want.stop - 1} "
                        f"({n_head // n_kv_head} query heads per kv head)")
                    break
            if problems:
                break
        if len(problems) == 3:
            break
    return problems


# --- lesson 08: a memory budget -------------------------------------------------------------

BUDGET_CASES = [dict(n_embd=256, n_head=8, n_layer=4, vocab_size=13, n_ctx=13),
                dict(n_embd=96, n_head=6, n_layer=5, vocab_size=1000, n_ctx=64),
                dict(n_embd=64, n_head=4, n_layer=3, vocab_size=50, n_ctx=16)]
LAYOUTS = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 3, 1), (1, 2, 3), (2, 1, 3)]


def state_bytes(config, tp, pp, tp_rank, pp_rank):
    """Bytes of float32 parameters one rank holds: its pipeline stage's parameters, each cut as
    the parameter table cuts it for tensor-parallel rank ``tp_rank`` of ``tp``."""
    from mpipar.models.params import param_shapes, shard_index, spec
    from mpipar.parallel.pipeline_stage import stage_names
    shapes, total = param_shapes(config), 0
    for name in stage_names(config, pp_rank, pp):
        shape, split = list(shapes[name]), spec(name).split
        if split is not None:
            shape[split.axis] = len(shard_index(config, split, tp, tp_rank))
        total += 4 * int(np.prod(shape))
    return total


@exercise("08_memory_budget")
def memory_budget_check(memory_budget):
    """memory_budget(config, dp, tp, pp, tp_rank, pp_rank) -> bytes of parameters, gradients and
    AdamW's two moments (all float32) that one rank holds: 16 bytes per parameter of its share."""
    from mpipar.models import GPTConfig
    problems = []
    for fields in BUDGET_CASES:
        config = GPTConfig(**fields)
        for dp, tp, pp in LAYOUTS:
            if pp > config.n_layer or tp > config.n_head:
                continue
            for pp_rank in range(pp):
                for tp_rank in range(tp):
                    want = 4 * state_bytes(config, tp, pp, tp_rank, pp_rank)
                    got = int(memory_budget(config, dp, tp, pp, tp_rank, pp_rank))
                    if got != want:
                        problems.append(
                            f"d = {config.n_embd}, {config.n_layer} layers, vocabulary {config.vocab_size}, "
                            f"dp {dp} x tp {tp} x pp {pp}, tp rank {tp_rank}, stage {pp_rank}: "
                            f"{got:,} bytes, want {want:,} ({want // 16:,} parameters x 16 bytes)"
                            + (" -- dp replicates, it does not divide" if got * dp == want else ""))
                        break
                if problems:
                    break
            if len(problems) == 3:
                return problems
    return problems



# --- lesson 09: ZeRO-1's step ---------------------------------------------------------------

ZERO_CASES = [(1, 7), (2, 10), (3, 1001), (4, 3), (3, 2), (4, 64)]   # (p, n): uneven and short


def _zero_inputs(p, n, seed):
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(p)]
    params = rng.standard_normal(n).astype(np.float32)
    return grads, params


@exercise("09_zero1")
def zero1_check(zero1_step):
    """zero1_step(grads, params, m, v, t, lr) -> the new params, emulating p ranks of ZeRO-1:
    rank r sums block r of every rank's gradient in rank order (a reduce-scatter), updates that
    block of the parameters with its own moments m[r], v[r] (AdamW, adamw_update), and the
    blocks are put back together (an allgather). Bitwise: AdamW on the whole summed gradient."""
    from mpipar.collectives.blocks import split_offsets
    from mpipar.models.optim import adamw_update
    problems = []
    lr, betas, eps = 1e-2, (0.9, 0.98), 1e-8
    for p, n in ZERO_CASES:
        offsets = split_offsets(n, p)
        m = [np.zeros(offsets[r + 1] - offsets[r], np.float32) for r in range(p)]
        v = [np.zeros_like(b) for b in m]
        whole, wm, wv = None, np.zeros(n, np.float32), np.zeros(n, np.float32)
        for t in (1, 2, 3):
            grads, params = _zero_inputs(p, n, seed=10 * p + t)
            whole = params.copy() if whole is None else whole
            start = whole.copy()
            total = grads[0].copy()
            for g in grads[1:]:
                total += g                               # rank order: ((g_0 + g_1) + g_2) + ...
            adamw_update(whole, total, wm, wv, lr, betas, eps, 0.0, 1 - betas[0] ** t, 1 - betas[1] ** t)
            try:
                got = np.asarray(zero1_step([g.copy() for g in grads], start.copy(), m, v, t, lr))
            except NotImplementedError:
                raise
            except Exception as e:  # e.g. a block of one size updated with moments of another
                problems.append(f"p = {p}, n = {n}, step {t}: it raised {type(e).__name__}: {e}")
                break
            sizes = [len(b) for b in m]
            if sizes != [offsets[r + 1] - offsets[r] for r in range(p)]:
                problems.append(f"p = {p}, n = {n}: the moments' blocks have {sizes} elements; each "
                                f"rank keeps only its own block ({np.diff(offsets).tolist()})")
            elif got.shape != (n,) or got.dtype != np.float32:
                problems.append(f"p = {p}, n = {n}: returned {got.dtype} of shape {got.shape}, want "
                                f"float32 of shape ({n},): every rank's block, gathered")
            elif not np.array_equal(got, whole):
                bad = int(np.argmax(got != whole))
                owner = int(np.searchsorted(offsets, bad, side="right") - 1)
                problems.append(f"p = {p}, n = {n}, step {t}: element {bad} (rank {owner}'s block) is "
                                f"{got[bad]!r}, want {whole[bad]!r} -- AdamW on the gradients summed in "
                                f"rank order, with that rank's moments")
            elif not all(np.array_equal(m[r], wm[offsets[r]:offsets[r + 1]]) for r in range(p)):
                problems.append(f"p = {p}, n = {n}, step {t}: the moments m[r] are not AdamW's for "
                                "block r: update them in place (adamw_update does)")
            if problems:
                break
            whole = got.copy()
        if len(problems) == 3:
            break
    return problems
