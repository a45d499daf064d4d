"""Byte and time figures as the reports print them."""
import pytest

from mpipar.measure.units import format_bytes, format_seconds


@pytest.mark.parametrize("n, text", [
    (12, "12 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (4092, "~4 KiB"),
    (1000 * 1024, "1000 KiB"), (1023 * 1024, "1023 KiB"), (1 << 20, "1 MiB"),
    (1022.6 * 2**20, "~1023 MiB"), (-2048, "-2 KiB"), (2000 * 2**30, "2000 GiB")])
def test_format_bytes_never_prints_an_exponent(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("seconds, text", [(41.2e-6, "41.2 us"), (1.25e-3, "1.25 ms"),
                                           (2.034, "2.03 s"), (0, "0"), (5e-9, "5 ns")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
