"""ZeRO's arithmetic without MPI: the layout's blocks, the memory and byte formulas, the
stage-3 gather schedule, and the elementwise AdamW update the sharded optimizer relies on."""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.models import GPT, PRESETS, init_params
from mpipar.models.optim import AdamW, adamw_update, global_grad_norm, norm_from_squares, square_sums
from mpipar.parallel import zero_layout
from mpipar.parallel.zero_gather import gather_counts, step_uses
from mpipar.parallel.zero_layout import ZeroLayout, predicted_memory

CFG = PRESETS["tiny"]
MODEL = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_blocks_and_pieces_cover_every_parameter_once(p):
    layout = ZeroLayout(MODEL, p)
    assert layout.numel == sum(v.size for v in init_params(CFG, 0).values())
    assert sum(layout.owned(r) for r in range(p)) == layout.numel
    for g in layout.groups:
        covered = []
        for r in range(p):
            pieces = g.pieces(r)
            assert sum(hi - lo for _, lo, hi, _ in pieces) == g.owned(r)
            assert all(a[2] == b[1] for a, b in zip(pieces, pieces[1:]))  # contiguous
            covered += [name for name, *_ in pieces]
        assert set(covered) == set(g.names)
        assert max(g.owned(r) for r in range(p)) - min(g.owned(r) for r in range(p)) <= 1


def test_memory_formulas_are_the_papers_in_float32():
    psi, p = 1000, 4
    mem = {s: predicted_memory(s, psi, psi // p)["total"] for s in range(4)}
    assert mem == {0: 16 * psi, 1: 8 * psi + 8 * psi // p, 2: 4 * psi + 12 * psi // p,
                   3: 16 * psi // p}
    assert predicted_memory(2, psi, 250)["grads"] == 1000


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_ring_bytes_over_all_ranks_are_every_block_but_one(p):
    for g in ZeroLayout(MODEL, p).groups:
        assert sum(zero_layout.ring_reduce_scatter_bytes(g, r) for r in range(p)) == 4 * (p - 1) * g.n
        assert sum(zero_layout.ring_allgather_bytes(g, r) for r in range(p)) == 4 * (p - 1) * g.n
    assert zero_layout.paper_step_bytes(3, 600, p) == 1.5 * zero_layout.paper_step_bytes(1, 600, p)


def test_stage_three_gathers_blocks_twice_ln_f_once_the_tied_embedding_three_times():
    layout = ZeroLayout(MODEL, 2)
    counts = gather_counts(step_uses(layout, CFG.n_layer), len(layout.groups))
    assert counts[layout.group_of["ln_f.weight"]] == 1
    assert counts[layout.group_of["wte.weight"]] == 3
    assert all(counts[layout.group_of[f"h.{i}.ln_1.weight"]] == 2 for i in range(CFG.n_layer))


def test_norm_from_squares_is_global_grad_norm_also_for_a_split_model():
    split = GPT(CFG, init_params(CFG, 0), MPI.COMM_SELF, ways=2)
    rng = np.random.default_rng(0)
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shard.items()
              if isinstance(v, np.ndarray)} for shard in split.shards]
    assert norm_from_squares(split.tp, square_sums(grads), 2) == global_grad_norm(split.tp, grads)


def test_adamw_update_of_pieces_is_the_whole_update_bit_for_bit():
    rng = np.random.default_rng(1)
    p, g = (rng.standard_normal(101).astype(np.float32) for _ in range(2))
    m, v = rng.standard_normal(101).astype(np.float32), rng.random(101).astype(np.float32)
    whole = [a.copy() for a in (p, m, v)]
    adamw_update(whole[0], g, whole[1], whole[2], 1e-3, (0.9, 0.98), 1e-8, 0.01, 0.19, 0.0396)
    for lo, hi in ((0, 7), (7, 60), (60, 101)):
        adamw_update(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], 1e-3, (0.9, 0.98), 1e-8, 0.01, 0.19,
                     0.0396)
    assert all(np.array_equal(a, b) for a, b in zip((p, m, v), whole))
    assert AdamW(MODEL).state_bytes() == 0
