"""Every entry point's options driven with generated bad values (hypothesis): each is refused
with an error that names the option -- a usage error (exit 2) or a ValueError that
``run_main`` turns into one -- before any work, in-process at p = 1; and a few of them as real
jobs at p = 2: one error line from rank 0, no traceback, a non-zero exit, within seconds."""
import importlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs import assert_one_clear_error
import pytest

NOT_A_NUMBER = st.sampled_from(["abc", "", "1.5.2", "0x", "½", " "])
AT_MOST_ZERO = st.integers(max_value=0).map(str)
NEGATIVE = st.integers(max_value=-1).map(str)
BAD_FLOAT = st.sampled_from(["nan", "inf", "-inf", "-1", "abc", ""])

#: (module, fixed args, option, strategy of bad values)
CASES = [
    ("mpipar.train", ["--preset", "tiny"], "--steps", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--tp", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--dp", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--pp", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny", "--pp", "1"], "--micro-batches", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--n-layer", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--eval-every", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--lr", BAD_FLOAT | st.sampled_from(["0", "2", "1e30"])),
    ("mpipar.train", ["--preset", "tiny"], "--bucket-kb", BAD_FLOAT | st.sampled_from(["0", "1e12"])),
    ("mpipar.train", ["--preset", "tiny"], "--seed", NEGATIVE | NOT_A_NUMBER),
    ("mpipar.train", ["--preset", "tiny"], "--timeout", BAD_FLOAT | st.sampled_from(["0"])),
    ("mpipar.demo", ["--preset", "tiny"], "--tokens", NEGATIVE | NOT_A_NUMBER),
    ("mpipar.demo", ["--preset", "tiny"], "--prompt-length", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.demo", ["--preset", "tiny"], "--seed", NEGATIVE | NOT_A_NUMBER),
    ("mpipar.demo", ["--preset", "tiny"], "--pp", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.demo", ["--preset", "tiny", "--pp", "1"], "--copies", NOT_A_NUMBER | AT_MOST_ZERO),
    ("mpipar.generate", [], "--max-new-tokens", NEGATIVE | NOT_A_NUMBER),
    ("mpipar.generate", [], "--temperature", BAD_FLOAT),
    ("mpipar.generate", [], "--copies", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.generate", [], "--pp", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.demo_collectives", [], "--size", NOT_A_NUMBER | st.sampled_from(["-4", "1.5KiB", "3 parsecs"])),
    ("mpipar.demo_collectives", [], "--repeat", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.bench", ["forward", "--preset", "tiny"], "--seq", AT_MOST_ZERO | NOT_A_NUMBER),
    ("mpipar.bench", ["pp"], "--micro-batches", AT_MOST_ZERO | NOT_A_NUMBER),
]
IDS = [f"{module.split('.')[-1]} {option}" for module, _, option, _ in CASES]


def refused(module, argv, capsys):
    """Run ``module.main(argv)`` in this process; the error text (a usage error or a ValueError)."""
    main = importlib.import_module(module if module != "mpipar.bench" else "mpipar.bench.__main__").main
    try:
        status = main(argv)
    except SystemExit as stop:
        assert stop.code == 2, stop.code
        return capsys.readouterr().err
    except ValueError as error:
        return str(error)
    pytest.fail(f"{argv} was accepted (exit {status})")


@pytest.mark.parametrize("module, fixed, option, values", CASES, ids=IDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_bad_value_is_refused_naming_its_option(module, fixed, option, values, data, capsys):
    value = data.draw(values, label=option)
    text = refused(module, fixed + [f"{option}={value}"], capsys)
    assert option in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("module, fixed, option, values", CASES[::6], ids=IDS[::6])
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_as_a_job_of_two_ranks_one_clear_error(module, fixed, option, values, data):
    value = data.draw(values, label=option)
    proc = assert_one_clear_error(module, 2, fixed + [f"{option}={value}"], "error:", timeout=60)
    line = next(line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line)
    assert option in line, line
