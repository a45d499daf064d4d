"""What every entry point owes a user who got something wrong: one clear message."""
from mpipar import launch


def assert_one_clear_error(target, n, args, message, timeout=120):
    """Run ``target`` on ``n`` ranks; it must fail with ``message`` printed exactly once
    (rank 0 only), no traceback, and a non-zero exit status. Returns the output."""
    job = launch.run(target, n=n, args=args, check=False, timeout=timeout)
    text = job.stdout + job.stderr
    assert job.returncode != 0, text
    assert text.count(message) == 1, text
    assert "Traceback" not in text, text
    return text
