"""The pipeline simulator: every schedule for p <= 6, m <= 12 completes, never starts a step
before what it needs has arrived, and takes as long as the formulas say; bubbles, peak
activations, and the errors for schedules that cannot run."""
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from mpipar.parallel.schedule_formulas import (
    predicted_bubble,
    predicted_bubble_of_ideal,
    predicted_makespan,
    predicted_peak,
)
from mpipar.parallel.schedule_sim import DEFAULT_COST, check, simulate, step_durations
from mpipar.parallel.schedules import SCHEDULE_NAMES, Schedule, Step, interleaved, make_schedule, one_f_one_b

P_MAX, M_MAX = 6, 12


def sweep(names=SCHEDULE_NAMES, p_max=P_MAX, m_max=M_MAX):
    """(name, p, m, v) for every schedule that applies: interleaved with v in {2, 3}, m % p == 0."""
    for name in names:
        for p in range(1, p_max + 1):
            for m in range(1, m_max + 1):
                if name != "interleaved":
                    yield name, p, m, 1
                elif m % p == 0:
                    yield from ((name, p, m, v) for v in (2, 3))


def needs(schedule, rank, step):
    """What ``step`` must wait for, from the rules alone: stage s = chunk * p + rank; F(s)
    after F(s - 1), B(s) after F(s) and B(s + 1), W(s) after B(s)."""
    p, s = schedule.p, step.chunk * schedule.p + rank

    def at(stage, kind):
        return stage % p, Step(kind, step.micro, stage // p)

    if step.kind == "F":
        return [at(s - 1, "F")] if s > 0 else []
    if step.kind == "B":
        return [at(s, "F")] + ([at(s + 1, "B")] if s + 1 < schedule.n_stages else [])
    return [at(s, "B")]


def assert_causal(timeline, comm=0):
    """No step starts before what it needs has finished (and, from another rank, arrived);
    no rank runs two steps at once, and each runs its list in order."""
    s = timeline.schedule
    end = {(r, step): timeline.end[r][k] for r, row in enumerate(s.steps) for k, step in enumerate(row)}
    for r, row in enumerate(s.steps):
        for k, step in enumerate(row):
            start = timeline.start[r][k]
            assert k == 0 or start >= timeline.end[r][k - 1]
            for dep_rank, dep in needs(s, r, step):
                assert start >= end[(dep_rank, dep)] + (comm if dep_rank != r else 0), (r, step, dep)


def unit_time_steps(name, p, m, v):
    """The formulas in time steps, written out: every step one time unit (a fused backward
    one unit too; ZB-H1's B and W one each)."""
    if name in ("gpipe", "1f1b"):
        return 2 * (m + p - 1)
    if name == "interleaved":
        return 2 * (v * m + p - 1)
    return 3 * m + p - 1 if m >= p else 2 * (m + p) - 1


def unit_cost(name, v):
    """Costs per full stage that make every step of ``name`` one time unit long."""
    return {"F": v, "B": v, "W": 0} if name != "zb-h1" else {"F": 1, "B": 1, "W": 1}


def test_every_schedule_completes_causally_in_the_formulas_time():
    for name, p, m, v in sweep():
        schedule = make_schedule(name, p, m, v)
        timeline = simulate(schedule, unit_cost(name, v))
        assert_causal(timeline)
        assert timeline.makespan == unit_time_steps(name, p, m, v), (name, p, m, v)
        default = simulate(schedule)  # F = B = W = 1 per full stage
        assert default.makespan == predicted_makespan(name, p, m, v), (name, p, m, v)


def test_bubble_per_rank_equals_both_predictions():
    for name, p, m, v in sweep():
        timeline = simulate(make_schedule(name, p, m, v))
        ideal = m * 3  # F + B + W per micro-batch and full stage
        if name in ("gpipe", "1f1b"):
            of_step, of_ideal = Fraction(p - 1, m + p - 1), Fraction(p - 1, m)
        elif name == "interleaved":
            of_step, of_ideal = Fraction(p - 1, v * m + p - 1), Fraction(p - 1, v * m)
        elif m >= p:
            of_step, of_ideal = Fraction(p - 1, 3 * m + p - 1), Fraction(p - 1, 3 * m)
        else:
            of_step = of_ideal = None
        for r in range(p):
            assert timeline.busy[r] == ideal
            assert timeline.bubble[r] == Fraction(timeline.idle[r], timeline.makespan)
            assert timeline.bubble[r] == predicted_bubble(name, p, m, v)
            assert Fraction(timeline.idle[r], ideal) == predicted_bubble_of_ideal(name, p, m, v)
            if of_step is not None:
                measured = (timeline.bubble[r], Fraction(timeline.idle[r], ideal))
                assert measured == (of_step, of_ideal), (name, p, m, v)
        assert timeline.mean_bubble == timeline.bubble[0]


def test_zb_h1_bubble_is_a_third_of_1f1b_at_equal_costs():
    for _, p, m, _ in sweep(["zb-h1"]):
        zb, fb = simulate(make_schedule("zb-h1", p, m)), simulate(one_f_one_b(p, m))
        if m >= p:
            assert all(3 * a == b for a, b in zip(zb.idle, fb.idle)), (p, m)
        assert zb.makespan <= fb.makespan


def test_peak_activations_held():
    for name, p, m, v in sweep():
        timeline = simulate(make_schedule(name, p, m, v))
        peaks = timeline.peak_in_flight
        assert list(peaks) == [predicted_peak(name, p, m, v, r) for r in range(p)], (name, p, m, v)
        assert timeline.peak_activations == tuple(Fraction(x, v) for x in peaks)
        if name == "gpipe":
            assert peaks == (m,) * p
        if name == "1f1b":
            assert all(peaks[r] <= p - r for r in range(p))
        if name == "zb-h1":  # never more than 1F1B's busiest rank
            assert max(peaks) <= max(simulate(one_f_one_b(p, m)).peak_in_flight)
    assert simulate(interleaved(4, 8, 2)).peak_activations[0] == Fraction(11, 2)  # p (1 + (p-1)/(p v))


OTHER_COSTS = [{"F": 1, "B": 2, "W": 1}, {"F": 2, "B": 1, "W": 1}, {"F": 3, "B": 4, "W": 2},
               {"F": 1, "B": 1}, {"F": 0.5, "B": 1.5, "W": 0.25}]


@pytest.mark.parametrize("cost", OTHER_COSTS)
def test_formulas_hold_for_other_costs(cost):
    for name, p, m, v in sweep(p_max=4, m_max=8):
        timeline = simulate(make_schedule(name, p, m, v), cost)
        assert timeline.makespan == pytest.approx(predicted_makespan(name, p, m, v, cost), abs=1e-12)


def test_zb_h1_formula_needs_a_short_weight_gradient():
    with pytest.raises(ValueError, match="t_W <= min"):
        predicted_makespan("zb-h1", 4, 8, cost={"F": 1, "B": 1, "W": 2})
    with pytest.raises(ValueError, match="multiple"):
        predicted_makespan("interleaved", 4, 6, v=2)


def test_a_1f1b_timeline_worked_by_hand():
    # p = 2, m = 3, F = 1, fused B = 2: rank 1 turns each forward round at once.
    t = simulate(one_f_one_b(2, 3), {"F": 1, "B": 2})
    assert t.durations == {"F": 1, "B": 2, "W": 0}
    assert list(zip(t.start[0], t.end[0])) == [(0, 1), (1, 2), (4, 6), (6, 7), (7, 9), (10, 12)]
    assert list(zip(t.start[1], t.end[1])) == [(1, 2), (2, 4), (4, 5), (5, 7), (7, 8), (8, 10)]
    assert (t.makespan, t.busy, t.idle) == (12, (9, 9), (3, 3))
    assert t.when(1, Step("B", 2)) == (8, 10)


def test_communication_latency():
    c = Fraction(1, 4)
    for name, p, m, v in sweep(p_max=5, m_max=8):
        schedule = make_schedule(name, p, m, v)
        slow, fast = simulate(schedule, comm=c), simulate(schedule)
        assert_causal(slow, comm=c)
        assert slow.makespan >= fast.makespan + 2 * (p - 1) * c  # micro-batch 0 crosses 2 (p - 1) links
        if name == "gpipe":  # all forwards stream, then all backwards: exactly that
            assert slow.makespan == fast.makespan + 2 * (p - 1) * c


def test_step_durations():
    assert step_durations(one_f_one_b(2, 2)) == {"F": 1, "B": 2, "W": 1}  # fused B = B + W
    assert step_durations(make_schedule("zb-h1", 2, 2)) == DEFAULT_COST
    assert step_durations(interleaved(2, 2, 2), {"F": 1, "B": 2, "W": 1}) == \
        {"F": Fraction(1, 2), "B": Fraction(3, 2), "W": Fraction(1, 2)}
    with pytest.raises(ValueError, match="among F, B, W"):
        step_durations(one_f_one_b(2, 2), {"F": 1, "Bi": 1})
    with pytest.raises(ValueError, match="non-negative"):
        step_durations(one_f_one_b(2, 2), {"F": -1})
    with pytest.raises(ValueError, match="non-negative"):
        simulate(one_f_one_b(2, 2), comm=-1)


def edited(schedule, rank, row):
    rows = list(schedule.steps)
    rows[rank] = tuple(row)
    return schedule._replace(steps=tuple(rows))


def test_broken_schedules_are_named_by_rank_and_step():
    good = one_f_one_b(2, 2)  # rank 0: F0 F1 B0 B1; rank 1: F0 B0 F1 B1
    cases = [
        (edited(good, 1, good.steps[1][:-1]), "rank 1: B1 is missing"),
        (edited(good, 0, good.steps[0] + (Step("B", 1),)), "rank 0: B1 appears twice"),
        (edited(good, 0, good.steps[0] + (Step("F", 2),)), "rank 0: step 4"),
        (edited(good, 0, good.steps[0] + (Step("W", 0),)), "rank 0: W1 is missing"),
        (edited(good, 1, [Step("B", 0), Step("F", 0), Step("F", 1), Step("B", 1)]),
         "rank 1: B0 (step 0) needs F0, which comes later (step 1)"),
        (good._replace(steps=good.steps[:1]), "1 rank lists for p = 2"),
    ]
    for schedule, words in cases:
        with pytest.raises(ValueError) as info:
            simulate(schedule)
        assert words in str(info.value)
    # the deadlock, in full: each rank waits for the other
    rank0 = [Step("F", 0), Step("B", 0), Step("F", 1), Step("B", 1)]
    rank1 = [Step("F", 1), Step("F", 0), Step("B", 0), Step("B", 1)]
    with pytest.raises(ValueError) as info:
        simulate(Schedule("mine", 2, 2, 1, (tuple(rank0), tuple(rank1))))
    assert str(info.value) == ("the schedule cannot complete: rank 0 waits at B0 (step 1) for rank 1's B0; "
                               "rank 1 waits at F1 (step 0) for rank 0's F1")
    check(good)  # and the good one passes


@settings(max_examples=150, deadline=None)
@given(data=st.data(), name=st.sampled_from(SCHEDULE_NAMES), p=st.integers(1, 4), m=st.integers(1, 4))
def test_any_reordering_either_runs_causally_or_is_refused_by_name(data, name, p, m):
    v = 2 if name == "interleaved" else 1
    schedule = make_schedule(name, p, m * p if v > 1 else m, v)
    rows = [data.draw(st.permutations(row)) for row in schedule.steps]
    shuffled = schedule._replace(steps=tuple(map(tuple, rows)))
    try:
        timeline = simulate(shuffled)
    except ValueError as e:
        assert "rank" in str(e)
    else:
        assert_causal(timeline)


def test_unequal_stages_per_rank_costs():
    """1F1B, p = 2, m = 2, stage 1 twice as slow (F = 2, B = 4): rank 1 never idles after its
    first input arrives; rank 0 waits for each backward of the slow stage."""
    # rank 0: F0 0-1, F1 1-2, B0 7-9, B1 13-15; rank 1: F0 1-3, B0 3-7, F1 7-9, B1 9-13
    tl = simulate(make_schedule("1f1b", 2, 2), [{"F": 1, "B": 2}, {"F": 2, "B": 4}])
    assert tl.busy == (6, 12)
    assert tl.makespan == 15 and tl.idle == (9, 3)
    assert tl.durations[1]["B"] == 4
    equal = simulate(make_schedule("1f1b", 2, 2), [{"F": 1, "B": 2}] * 2)
    assert equal.durations == {"F": 1, "B": 2, "W": 0}
    with pytest.raises(ValueError, match="3 costs for 2 ranks"):
        simulate(make_schedule("1f1b", 2, 2), [{"F": 1}] * 3)
