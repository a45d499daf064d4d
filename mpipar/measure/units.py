"""Bytes and seconds written for a person: the one place numbers get their units.

Binary prefixes for bytes (KiB = 1024 B, as MPI message sizes are usually
quoted); seconds in the unit that leaves one to three digits before the point.
"""


def format_bytes(n):
    """4096 -> '4 KiB', 1536 -> '1.5 KiB', 12 -> '12 B', 4092 -> '~4 KiB' (~: rounded)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            value = n / scale
            # 3 significant digits, but never an exponent: 1000-1023 of a unit print whole
            text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
            return f"{text} {unit}" if float(text) * scale == n else f"~{text} {unit}"
    return f"{n:.0f} B"


def format_seconds(seconds):
    """3 significant digits in the unit a person would use: 41.2 us, 1.25 ms, 2.03 s."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns" if seconds else "0"
