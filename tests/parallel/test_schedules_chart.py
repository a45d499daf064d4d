"""Pipeline schedules printed: the step table, the text Gantt chart and the summary."""
from mpipar.parallel.schedule_chart import chart, summary, table
from mpipar.parallel.schedule_sim import simulate
from mpipar.parallel.schedules import SCHEDULE_NAMES, interleaved, make_schedule, one_f_one_b, zb_h1


def test_table_lists_each_ranks_steps_in_order():
    assert table(one_f_one_b(2, 3)) == ("1f1b: p = 2 ranks, m = 3 micro-batches\n"
                                        "rank 0: F0 F1 B0 F2 B1 B2\n"
                                        "rank 1: F0 B0 F1 B1 F2 B2")
    assert table(interleaved(2, 2, 2)).splitlines()[1] == "rank 0: F0.0 F1.0 F0.1 F1.1 B0.1 B1.1 B0.0 B1.0"


def test_chart_of_1f1b_drawn_by_hand():
    # F = 1, fused B = 2 (the default costs): rank 1 idles at the start and the end,
    # rank 0 in the middle, waiting for B0's gradient.
    assert chart(one_f_one_b(2, 2)) == (
        "1f1b: p = 2 ranks, m = 2 micro-batches; one column = 1 time unit, F = 1, B = 2; step took 9\n"
        "t      0  1  2  3  4  5  6  7  8\n"
        "rank 0 F0 F1 .  .  B0 -- .  B1 --\n"
        "rank 1 .  F0 B0 -- F1 B1 -- .  .")


def test_chart_of_zb_h1_drawn_by_hand():
    assert chart(zb_h1(2, 2)).splitlines()[1:] == [
        "t      0  1  2  3  4  5  6",
        "rank 0 F0 F1 .  B0 W0 B1 W1",
        "rank 1 .  F0 B0 F1 B1 W0 W1"]


def test_every_chart_shows_every_step_and_the_idle_time():
    for name in SCHEDULE_NAMES:
        v = 2 if name == "interleaved" else 1
        schedule = make_schedule(name, 4, 8, v)
        timeline = simulate(schedule)
        text = chart(schedule, timeline, width=100)
        lines = text.splitlines()
        assert all(len(line) <= 100 for line in lines[1:])
        rows = {r: " ".join(line[7:] for line in lines if line.startswith(f"rank {r} ")) for r in range(4)}
        unit = timeline.durations["F"]  # the shortest step: one column
        for r, steps in enumerate(schedule.steps):
            cells = rows[r].split()
            assert [c for c in cells if c[0] in "FBW"] == [s.label(v) for s in steps]
            assert cells.count(".") == timeline.idle[r] / unit


def test_chart_with_latency_and_a_narrow_width():
    schedule = one_f_one_b(3, 4)
    text = chart(schedule, simulate(schedule, comm=0.5), width=40)
    assert "one column = 0.5 time units" in text
    assert sum(line.startswith("rank 2 ") for line in text.splitlines()) > 1  # wrapped
    assert all(len(line) <= 40 for line in text.splitlines()[1:])


def test_summary_puts_measurement_beside_formula():
    text = summary(one_f_one_b(4, 8))
    assert "step 33 time units" in text
    assert "formula: step 33, bubble 0.273 of the step (= 0.375 of the ideal time)" in text
    assert text.splitlines()[-1].split() == ["3", "24", "9", "0.273", "1", "(1)"]
    text = summary(interleaved(4, 8, 2))
    assert "bubble 0.158 of the step" in text and "= 5.5" in text
    text = summary(zb_h1(4, 8), simulate(zb_h1(4, 8), {"F": 1, "B": 1, "W": 2}))
    assert "formula: none" in text
