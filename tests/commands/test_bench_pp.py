"""python -m mpipar.bench pp as a notebook runs it: one row per (schedule, m, overlap mode), and the
figures that do not depend on the machine checked exactly.

These tests launch mpirun themselves (through ``mpipar.launch``), so they are ordinary
pytest tests, not ``mpi``-marked ones. A tiny GPT-2 and one timed step keep a job to a few
seconds on two cores. Nothing here asserts on time.

The closed forms are written out here, apart from mpipar.parallel.schedule_formulas, as an
independent check: the bubble of the step (p - 1) / (m + p - 1) for GPipe and 1F1B (Huang et
al. 2019), (p - 1) / (v m + p - 1) interleaved (Narayanan et al. 2021, sec. 2.2.2),
(p - 1) / (3 m + p - 1) for ZB-H1 with m >= p (Qi et al. 2024, sec. 3.1); and the bytes
between stages, an activation and a gradient of (b, T, d) float32 per micro-batch and cut.
"""
from fractions import Fraction

from jobs import assert_one_clear_error
import pytest

from mpipar import launch
from mpipar.collectives.progress import thread_level_problem
from mpipar.parallel.schedule_sim import simulate
from mpipar.parallel.schedules import make_schedule

D, T, B, V = 16, 8, 2, 2  # width, tokens, sequences per micro-batch, interleaved chunks
TINY = ["pp", "--n-embd", str(D), "--n-head", "2", "--seq", str(T), "--batch-per-micro", str(B),
        "--vocab", "32", "--trials", "1", "--quiet"]
MICRO = {2: [2, 3, 4], 3: [3, 4]}  # per world size: m < p never, m % p != 0 once
SCHEDULES = ["gpipe", "1f1b", "interleaved", "zb-h1"]


def bubble(name, p, m):
    """Idle share of the step and of the ideal time, equal stages (module docstring)."""
    slots = {"gpipe": m, "1f1b": m, "interleaved": V * m, "zb-h1": 3 * m}[name]
    return Fraction(p - 1, slots + p - 1), Fraction(p - 1, slots)


@pytest.fixture(scope="module", params=[2, 3])
def job(request):
    p = request.param
    return launch.run("mpipar.bench", n=p, timeout=120,
                      args=TINY + ["--micro-batches", ",".join(map(str, MICRO[p]))])


def test_one_row_per_schedule_m_and_mode_and_a_note_per_skip(job):
    data, p, modes = job.data, job.data["world_size"], job.data["settings"]["overlap"]
    assert data["benchmark"] == "pp" and data["settings"]["pp"] == p
    assert data["config"]["n_layer"] == V * p  # the default: one block per interleaved chunk
    assert modes == ["poll"] + (["thread"] if thread_level_problem() is None else [])
    cases = [(s, m) for s in SCHEDULES for m in MICRO[p] if not (s == "interleaved" and m % p)]
    want = [(s, m, mode) for s, m in cases for mode in modes]
    assert [(r["schedule"], r["micro_batches"], r["overlap"]) for r in data["rows"]] == want
    skips = [(s["schedule"], s["micro_batches"]) for s in data["skipped"]]
    assert skips == [("interleaved", m) for m in MICRO[p] if m % p]
    for name, m in skips:
        assert job.stdout.count(f"skipped {name} at m = {m}") == 1
    lines = job.stdout.splitlines()
    for name, m, mode in want:  # the table: one line each
        label = name + (f" v={V}" if name == "interleaved" else "")
        assert sum(line.split()[:len(label.split()) + 2] == [*label.split(), str(m), mode]
                   for line in lines) == 1, job.stdout
    assert "Traceback" not in job.stdout + job.stderr


def test_predictions_are_the_formulas(job):
    p = job.data["world_size"]
    for r in job.data["rows"]:
        name, m = r["schedule"], r["micro_batches"]
        of_step, of_ideal = bubble(name, p, m)
        assert r["bubble_predicted"] == pytest.approx(float(of_step), rel=1e-12), r["schedule"]
        assert r["bubble_predicted_of_ideal"] == pytest.approx(float(of_ideal), rel=1e-12)
        # the simulator run with each stage's own measured F, B, W (integer microseconds)
        costs = [{k: round(c * 1e6) for k, c in stage.items()}
                 for stage in r["measured_costs_seconds_per_stage"]]
        simulated = simulate(make_schedule(name, p, m, r["virtual_stages"]), costs)
        assert r["bubble_simulated"] == pytest.approx([float(b) for b in simulated.bubble], rel=1e-9)
        assert r["peak_in_flight"] == r["peak_in_flight_predicted"]
        assert r["peak_in_flight"][0] == {"gpipe": m, "1f1b": min(p, m), "zb-h1": min(p, m),
                                          "interleaved": min(V * p + p - 1, V * m)}[name]
    if p == 2:  # one example by hand: two stages, two micro-batches idle 1 slot of 3
        rows = {(r["schedule"], r["micro_batches"]): r for r in job.data["rows"]}
        assert rows[("1f1b", 2)]["bubble_predicted"] == pytest.approx(1 / 3, rel=1e-12)


def test_measurements_are_shares_and_medians(job):
    p = job.data["world_size"]
    for r in job.data["rows"]:
        measured = r["bubble_measured"]
        assert len(measured) == p and all(0 <= b < 1 for b in measured), r
        assert r["bubble_measured_mean"] == pytest.approx(sum(measured) / p)
        assert r["bubble_measured_max"] == max(measured)
        assert 0 <= r["bubble_simulated_mean"] < 1
        # one trial: the medians are its figures, each the slowest rank's
        assert r["step_seconds_trials"] == [r["step_seconds"]]
        assert r["step_seconds"] >= r["pipeline_seconds"] > 0
        assert set(r["measured_costs_seconds"]) == ({"F", "B", "W"} if r["schedule"] == "zb-h1"
                                                    else {"F", "B"})
        assert r["peak_activation_bytes_max"] == max(r["peak_activation_bytes"]) > 0
        assert r["global_batch"] == r["micro_batches"] * B


def test_the_modes_side_by_side_send_the_same_bytes(job):
    """One comparison entry per (schedule, m) with every mode's step, its speedup against
    the first mode, and the main thread's wait on every stage."""
    p, modes = job.data["world_size"], job.data["settings"]["overlap"]
    rows = {(r["schedule"], r["micro_batches"], r["overlap"]): r for r in job.data["rows"]}
    assert len(job.data["comparison"]) == len(rows) // len(modes)
    for c in job.data["comparison"]:
        assert list(c["modes"]) == modes and c["modes"][modes[0]]["speedup"] == 1.0
        for mode, figures in c["modes"].items():
            row = rows[(c["schedule"], c["micro_batches"], mode)]
            assert figures["step_seconds"] == row["step_seconds"] > 0
            assert len(figures["wait_seconds"]) == p and all(w >= 0 for w in figures["wait_seconds"])
            assert row["p2p_bytes"] == row["p2p_bytes_predicted"]  # the same messages in every mode
    if len(modes) > 1:
        assert "overlap modes side by side" in job.stdout
        assert sum(line.split()[:2] == ["gpipe", str(MICRO[p][0])] for line in
                   job.stdout.splitlines()) == 1 + len(modes)  # a row per mode, one side by side


def test_gpipe_holds_more_than_1f1b_on_rank_0(job):
    p = job.data["world_size"]
    rows = {(r["schedule"], r["micro_batches"]): r for r in job.data["rows"] if r["overlap"] == "poll"}
    for m in MICRO[p]:
        gpipe, one_f = (rows[(s, m)]["peak_activation_bytes"][0] for s in ("gpipe", "1f1b"))
        assert gpipe >= one_f
        if m > p:  # m micro-batches' activations against p
            assert gpipe > one_f


def test_p2p_bytes_are_activations_forward_and_gradients_back(job):
    """Per micro-batch, each of the S - 1 cuts between the S = p v model stages carries one
    (b, T, d) float32 activation forward and one gradient back: 2 (S - 1) m messages."""
    p = job.data["world_size"]
    for r in job.data["rows"]:
        stages = p * (V if r["schedule"] == "interleaved" else 1)
        assert r["stages"] == stages
        assert r["p2p_messages"] == 2 * (stages - 1) * r["micro_batches"]
        assert r["p2p_bytes"] == 2 * (stages - 1) * r["micro_batches"] * B * T * D * 4
        assert r["p2p_bytes"] == r["p2p_bytes_predicted"]
        assert sum(x["p2p_bytes_sent"] for x in r["ranks"]) == r["p2p_bytes"]


@pytest.mark.parametrize("args, message", [
    (["--schedules", "1f1b,bogus"], "unknown schedule 'bogus' in --schedules"),
    (["--micro-batches", "4,0"], "--micro-batches must be at least 1, got 0"),
    (["--n-layer", "3"], "4 pipeline stages need at least 4 layers; the model has 3"),
    (["--schedules", "interleaved", "--micro-batches", "3"], "nothing to run: the interleaved"),
    (["--virtual-stages", "1"], "--virtual-stages must be at least 2"),
    (["--overlap", "poll,bogus"], "unknown mode 'bogus' in --overlap; choose among none, poll, thread"),
])
def test_bad_option_one_message_nonzero_exit(args, message):
    proc = assert_one_clear_error("mpipar.bench", 2, ["pp"] + args, message, timeout=60)
    assert (proc.stdout + proc.stderr).count("usage:") == 1
    assert "== pipeline" not in proc.stdout  # nothing ran


def test_unwritable_json_fails_before_any_work(tmp_path):
    path = tmp_path / "missing" / "out.json"
    proc = assert_one_clear_error("mpipar.bench", 2, ["pp", "--json", str(path)],
                                  f"cannot write --json {str(path)!r}", timeout=60)
    assert proc.stdout == ""
