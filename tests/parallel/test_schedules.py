"""Pipeline schedules as data: the generators against tables written out by hand from the
papers' descriptions, the constructors' errors, and the messages each step exchanges."""
from collections import Counter

import pytest

from mpipar.parallel.schedule_comm import Transfer, dependencies, messages, transfers
from mpipar.parallel.schedules import (
    SCHEDULE_NAMES,
    Step,
    gpipe,
    interleaved,
    make_schedule,
    one_f_one_b,
    rank_and_chunk,
    stage_of,
    zb_h1,
)


def steps(text):
    """'F0 B0 W0 F1.1' -> Steps (the chunk after the dot, 0 when absent)."""
    out = []
    for cell in text.split():
        micro, _, chunk = cell[1:].partition(".")
        out.append(Step(cell[0], int(micro), int(chunk or 0)))
    return tuple(out)


# Hand-written from the papers' descriptions (see each generator's docstring):
# 1F1B: p - r - 1 warm-up forwards, then F/B pairs, then the remaining backwards.
# ZB-H1: 1F1B with B the input gradient; rank r starts its W passes r iterations late.
# Interleaved: (p - r - 1) * 2 + (v - 1) * p warm-up forwards; forwards go through the
# chunks in groups of p micro-batches, backwards through the chunks in reverse.
GOLD = {
    ("gpipe", 2, 2, 1): ["F0 F1 B0 B1",
                         "F0 F1 B0 B1"],
    ("gpipe", 3, 2, 1): ["F0 F1 B0 B1"] * 3,
    ("1f1b", 2, 3, 1): ["F0 F1 B0 F2 B1 B2",
                        "F0 B0 F1 B1 F2 B2"],
    ("1f1b", 3, 4, 1): ["F0 F1 F2 B0 F3 B1 B2 B3",
                        "F0 F1 B0 F2 B1 F3 B2 B3",
                        "F0 B0 F1 B1 F2 B2 F3 B3"],
    ("1f1b", 4, 2, 1): ["F0 F1 B0 B1",  # m < p: the warm-up is cut to m
                        "F0 F1 B0 B1",
                        "F0 F1 B0 B1",
                        "F0 B0 F1 B1"],
    ("1f1b", 3, 5, 1): ["F0 F1 F2 B0 F3 B1 F4 B2 B3 B4",
                        "F0 F1 B0 F2 B1 F3 B2 F4 B3 B4",
                        "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4"],
    ("zb-h1", 2, 2, 1): ["F0 F1 B0 W0 B1 W1",
                         "F0 B0 F1 B1 W0 W1"],
    ("zb-h1", 3, 3, 1): ["F0 F1 F2 B0 W0 B1 W1 B2 W2",
                         "F0 F1 B0 F2 B1 W0 B2 W1 W2",
                         "F0 B0 F1 B1 F2 B2 W0 W1 W2"],
    ("zb-h1", 3, 5, 1): ["F0 F1 F2 B0 W0 F3 B1 W1 F4 B2 W2 B3 W3 B4 W4",
                         "F0 F1 B0 F2 B1 W0 F3 B2 W1 F4 B3 W2 B4 W3 W4",
                         "F0 B0 F1 B1 F2 B2 W0 F3 B3 W1 F4 B4 W2 W3 W4"],
    ("zb-h1", 3, 2, 1): ["F0 F1 B0 W0 B1 W1",  # m < p
                         "F0 F1 B0 B1 W0 W1",
                         "F0 B0 F1 B1 W0 W1"],
    ("interleaved", 2, 2, 2): ["F0.0 F1.0 F0.1 F1.1 B0.1 B1.1 B0.0 B1.0",
                               "F0.0 F1.0 F0.1 B0.1 F1.1 B1.1 B0.0 B1.0"],
    ("interleaved", 2, 4, 2): ["F0.0 F1.0 F0.1 F1.1 F2.0 B0.1 F3.0 B1.1 F2.1 B0.0 F3.1 B1.0 "
                               "B2.1 B3.1 B2.0 B3.0",
                               "F0.0 F1.0 F0.1 B0.1 F1.1 B1.1 F2.0 B0.0 F3.0 B1.0 F2.1 B2.1 "
                               "F3.1 B3.1 B2.0 B3.0"],
    ("interleaved", 1, 2, 2): ["F0.0 F0.1 B0.1 F1.0 B0.0 F1.1 B1.1 B1.0"],
}


@pytest.mark.parametrize("key", sorted(GOLD), ids=lambda k: f"{k[0]}-p{k[1]}-m{k[2]}-v{k[3]}")
def test_schedule_equals_the_hand_written_table(key):
    name, p, m, v = key
    schedule = make_schedule(name, p, m, v)
    assert (schedule.name, schedule.p, schedule.m, schedule.v) == key
    assert schedule.steps == tuple(steps(row) for row in GOLD[key])
    assert schedule.split_backward == (name == "zb-h1")


def test_generators_are_the_named_schedules():
    assert gpipe(3, 4) == make_schedule("gpipe", 3, 4)
    assert one_f_one_b(3, 4) == make_schedule("1f1b", 3, 4)
    assert zb_h1(3, 4) == make_schedule("zb-h1", 3, 4)
    assert interleaved(3, 6, 3) == make_schedule("interleaved", 3, 6, v=3)
    assert interleaved(2, 4) == make_schedule("interleaved", 2, 4, 2)  # v = 2 by default
    assert SCHEDULE_NAMES == ("gpipe", "1f1b", "interleaved", "zb-h1")


def test_a_single_rank_runs_forward_and_backward_in_turn():
    assert one_f_one_b(1, 3).steps == (steps("F0 B0 F1 B1 F2 B2"),)
    assert zb_h1(1, 2).steps == (steps("F0 B0 W0 F1 B1 W1"),)
    assert gpipe(1, 2).steps == (steps("F0 F1 B0 B1"),)


@pytest.mark.parametrize("args, words", [
    (("pipedream", 2, 2), ["unknown", "'pipedream'", "gpipe, 1f1b, interleaved, zb-h1"]),
    (("1f1b", 0, 2), ["--pp", "at least 1", "0"]),
    (("gpipe", 2, 0), ["--micro-batches", "at least 1", "0"]),
    (("zb-h1", -1, 4), ["--pp"]),
    (("interleaved", 2, 3, 2), ["--micro-batches (3) must be a multiple of --pp (2)", "interleaved"]),
    (("interleaved", 3, 4, 2), ["multiple of --pp"]),
    (("interleaved", 2, 4, 1), ["--virtual-stages", "at least 2", "1f1b"]),
    (("interleaved", 2, 4), ["--virtual-stages"]),
    (("1f1b", 2, 4, 2), ["--virtual-stages 2", "--schedule interleaved"]),
])
def test_make_schedule_explains_what_it_cannot_build(args, words):
    with pytest.raises(ValueError) as info:
        make_schedule(*args)
    for word in words:
        assert word in str(info.value)


def test_sizes_must_be_integers():
    with pytest.raises(TypeError):
        make_schedule("1f1b", 2.0, 4)


def test_step_labels_and_stage_numbering():
    assert Step("F", 3).label() == "F3"
    assert Step("B", 3, 1).label(v=2) == "B3.1"
    assert Step("F", 0, 0).label(v=2) == "F0.0"
    kind, micro, chunk = Step("W", 2)  # a plain (action, micro-batch, chunk) tuple
    assert (kind, micro, chunk) == ("W", 2, 0)
    # Megatron's interleaved assignment: rank r's chunk c is model stage c * p + r.
    assert [stage_of(4, r, c) for c in range(2) for r in range(4)] == list(range(8))
    assert all(rank_and_chunk(4, stage_of(4, r, c)) == (r, c) for r in range(4) for c in range(3))
    assert make_schedule("interleaved", 4, 8, 2).n_stages == 8


def test_dependencies_follow_the_model_stages():
    s = interleaved(2, 2, 2)  # stages: 0 = rank 0 chunk 0, 1 = rank 1 chunk 0, 2 = rank 0 chunk 1, 3 = ...
    assert dependencies(s, 0, Step("F", 1, 0)) == []  # the first stage reads the data
    assert dependencies(s, 0, Step("F", 1, 1)) == [(1, Step("F", 1, 0))]  # stage 2 <- stage 1
    assert dependencies(s, 1, Step("F", 0, 0)) == [(0, Step("F", 0, 0))]
    assert dependencies(s, 1, Step("B", 0, 1)) == [(1, Step("F", 0, 1))]  # the last stage: its loss
    assert dependencies(s, 0, Step("B", 0, 1)) == [(0, Step("F", 0, 1)), (1, Step("B", 0, 1))]
    assert dependencies(s, 1, Step("B", 0, 0)) == [(1, Step("F", 0, 0)), (0, Step("B", 0, 1))]
    z = zb_h1(3, 3)
    assert dependencies(z, 1, Step("W", 2)) == [(1, Step("B", 2))]
    assert dependencies(z, 1, Step("B", 2)) == [(1, Step("F", 2)), (2, Step("B", 2))]


def test_transfers_of_a_step():
    s = one_f_one_b(3, 4)
    recv, send = transfers(s, 1, Step("F", 2))
    assert [(t.src, t.src_step, t.dst, t.dst_step, t.what) for t in recv] == \
        [(0, Step("F", 2), 1, Step("F", 2), "activation")]
    assert [(t.src, t.dst, t.dst_step, t.what) for t in send] == [(1, 2, Step("F", 2), "activation")]
    recv, send = transfers(s, 1, Step("B", 2))
    assert [(t.src, t.src_step, t.what) for t in recv] == [(2, Step("B", 2), "gradient")]
    assert [(t.dst, t.dst_step, t.what) for t in send] == [(0, Step("B", 2), "gradient")]
    first_recv, first_send = transfers(s, 0, Step("F", 0))
    assert first_recv == [] and first_send == transfers(s, 1, Step("F", 0))[0]  # one message, both ends
    assert transfers(s, 2, Step("B", 0))[0] == []  # the last stage computes the loss itself
    assert transfers(zb_h1(3, 3), 1, Step("W", 0)) == ([], [])  # nobody waits for a weight gradient
    # the interleaved wrap-around: rank p - 1's chunk 0 feeds rank 0's chunk 1
    recv, _ = transfers(interleaved(2, 2, 2), 0, Step("F", 1, 1))
    assert [(t.src, t.src_step) for t in recv] == [(1, Step("F", 1, 0))]
    assert transfers(interleaved(1, 2, 3), 0, Step("F", 1, 2)) == ([], [])  # one rank: all local


def _all_schedules(max_p=6, max_m=12):
    for p in range(1, max_p + 1):
        for m in range(1, max_m + 1):
            for name in SCHEDULE_NAMES:
                if name != "interleaved":
                    yield make_schedule(name, p, m)
                elif m % p == 0:
                    yield from (interleaved(p, m, v) for v in (2, 3))


def test_every_message_is_received_exactly_once_with_a_unique_tag():
    for s in _all_schedules(max_p=5, max_m=8):
        sent = messages(s)
        received = [t for r, row in enumerate(s.steps) for step in row for t in transfers(s, r, step)[0]]
        assert Counter(sent) == Counter(received), s[:4]
        assert len({t.tag for t in sent}) == len(sent)
        assert all(isinstance(t, Transfer) and t.src != t.dst and t.tag >= 0 for t in sent)
        hops = s.n_stages - 1  # every micro-batch crosses every stage boundary twice
        assert len(sent) == (2 * hops * s.m if s.p > 1 else 0)
