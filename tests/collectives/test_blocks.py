"""The block arithmetic of mpipar.collectives.blocks, on one process (no messages).

Rings and folds are replayed on a table of "who holds what": the ring steps must
move every partial result once round the ring, the folds must pair every extra
rank with one partner, and every rank must count the same steps.
"""
import numpy as np
import pytest

from mpipar.collectives.blocks import (
    Fold,
    from_wire,
    ring_step,
    split,
    split_offsets,
    to_wire,
    weighted_split_offsets,
)

PS = range(1, 9)


@pytest.mark.parametrize("p", PS)
def test_splits_are_those_of_array_split(p):
    for n in range(0, 3 * p + 2):
        parts = np.array_split(np.arange(n), p)
        assert split_offsets(n, p) == [0] + np.cumsum([len(a) for a in parts]).tolist()
        assert [np.arange(n)[split(n, p, r)].tolist() for r in range(p)] == [a.tolist() for a in parts]


@pytest.mark.parametrize("p", PS)
def test_weighted_splits_even_the_loads(p):
    rng = np.random.default_rng(p)
    for n in range(0, 3 * p + 2):
        assert weighted_split_offsets(n, [7] * p, 3) == split_offsets(n, p)  # equal loads
        for _ in range(20):
            fixed = rng.integers(0, 5 * p, p).tolist()
            offsets = weighted_split_offsets(n, fixed, 3)
            sizes = np.diff(offsets)
            assert offsets[0] == 0 and offsets[-1] == n and sizes.min(initial=0) >= 0
            loads = np.array(fixed) + 3 * sizes
            # no unit could move to a lighter shard and make the loads more even: every shard
            # given units is at most one unit's load above the lightest shard
            assert loads[sizes > 0].max(initial=0) - loads.min() <= 3, (n, fixed, offsets)


@pytest.mark.parametrize("p", PS)
def test_ring_reduce_scatter_leaves_block_r_complete_on_rank_r(p):
    # held[r][b]: the ranks whose data rank r's copy of block b contains
    held = [[{r} for _ in range(p)] for r in range(p)]
    for s in range(p - 1):
        steps = [ring_step(p, r, s, "reduce_scatter") for r in range(p)]
        sent = [set(held[r][steps[r][0]]) for r in range(p)]
        for r in range(p):
            send_b, recv_b = steps[r]
            assert steps[(r - 1) % p][0] == recv_b  # the left neighbour sends what r expects
            held[r][recv_b] |= sent[(r - 1) % p]
    assert all(held[r][r] == set(range(p)) for r in range(p))


@pytest.mark.parametrize("p", PS)
def test_ring_allgather_gives_every_rank_every_block_once(p):
    have = [{r} for r in range(p)]  # the blocks rank r holds, its own first
    for s in range(p - 1):
        steps = [ring_step(p, r, s, "allgather") for r in range(p)]
        for r in range(p):
            send_b, recv_b = steps[r]
            assert send_b in have[r] and recv_b not in have[r]
            assert steps[(r - 1) % p][0] == recv_b
        for r in range(p):
            have[r].add(steps[r][1])
    assert all(h == set(range(p)) for h in have)


class Tally:
    """A stand-in for a Channel on one rank: counts steps and records the messages."""

    def __init__(self, rank, p, log):
        self.rank, self.size, self.steps, self.log = rank, p, 0, log

    def step(self):
        self.steps += 1

    def send(self, buf, dest):
        self.log.append((self.steps, self.rank, dest))

    def recv(self, buf, source):
        self.log.append((self.steps, source, self.rank))


@pytest.mark.parametrize("p", PS)
def test_fold_pairs_each_extra_with_one_partner_and_counts_steps_alike(p):
    fold, log = Fold(p, split_offsets(10, p)), []
    channels = [Tally(r, p, log) for r in range(p)]
    received = {"in": [], "out": []}
    for ch in channels:
        received["in"].append(fold.fold_in(ch, "send", "recv"))
        fold.sit_out(ch, phases=2)
        ch.steps += 0 if fold.is_extra(ch.rank) else 2 * fold.rounds  # the phases' own steps
        received["out"].append(fold.fold_out(ch, "send", "recv"))
    q = fold.q
    assert q & (q - 1) == 0 and q <= p < 2 * q and fold.rounds == q.bit_length() - 1
    assert {ch.steps for ch in channels} == {2 * fold.rounds + 2 * (q < p)}
    assert received["in"] == [r + q < p for r in range(p)]
    assert received["out"] == [r >= q for r in range(p)]
    extras = range(q, p)
    # every message appears twice (sent, received): extra -> partner at step 1, back at the last
    assert sorted(log) == sorted(2 * [(1, r, r - q) for r in extras]
                                 + 2 * [(2 * fold.rounds + 2, r - q, r) for r in extras])
    assert all(fold.partner(fold.partner(r)) == r for r in range(p) if fold.partner(r) is not None)


def test_fold_lays_slots_out_contiguously_and_back():
    # p = 6 onto q = 4: slot i is block i, then block i + 4 where rank i + 4 exists
    offsets = split_offsets(11, 6)  # block sizes 2, 2, 2, 2, 2, 1
    fold, x = Fold(6, offsets), np.arange(11.0)
    assert fold.order == [0, 4, 1, 5, 2, 3] and fold.slot_offsets == [0, 4, 7, 9, 11]
    assert fold.to_slots(x).tolist() == [0, 1, 8, 9, 2, 3, 10, 4, 5, 6, 7]
    assert fold.from_slots(fold.to_slots(x), np.empty(11)).tolist() == x.tolist()


def test_no_wire_means_no_cast_and_no_copy():
    x = np.arange(6, dtype=np.float32)
    assert to_wire(x, None) is x and from_wire(x, np.dtype(np.float32)) is x
    wired = to_wire(x, np.float16)
    assert wired.dtype == np.float16 and from_wire(wired, np.dtype(np.float32)).dtype == np.float32
