"""Parse the explicit units of devices.yaml: rates (tc-style), sizes, delays.

Every parser raises ValueError with a short reason; config.py turns that into a line
naming the file and the field.
"""

from __future__ import annotations

import re

_NUM = r"([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"

# tc's rate units: bit, kbit, mbit, gbit, tbit (decimal); bps/kbps... are bytes per second in tc.
_RATE = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "kibit": 1024,
    "mibit": 1024**2,
    "gibit": 1024**3,
}
_SIZE = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}
_TIME = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0}


def _split(text: object, kind: str) -> tuple[float, str]:
    if isinstance(text, bool) or text is None:
        raise ValueError(f"expected a {kind} with a unit, got {text!r}")
    if isinstance(text, (int, float)):
        raise ValueError(f"{text!r} has no unit; write e.g. {_EXAMPLE[kind]}")
    m = re.fullmatch(_NUM + r"\s*([A-Za-zµ]*)", str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a {kind} (e.g. {_EXAMPLE[kind]})")
    return float(m.group(1)), m.group(2)


_EXAMPLE = {"rate": "20mbit", "size": "1GiB", "delay": "10ms"}


def parse_rate(text: object) -> int:
    """A rate in bit/s from '20mbit', '1gbit', '500kbit'."""
    value, unit = _split(text, "rate")
    factor = _RATE.get(unit.lower())
    if factor is None:
        raise ValueError(f"{text!r}: unknown rate unit {unit!r} (use bit, kbit, mbit, gbit)")
    if value <= 0:
        raise ValueError(f"{text!r}: a rate must be positive")
    return int(round(value * factor))


def parse_size(text: object) -> int:
    """A size in bytes from '1GiB', '512MiB', '2GB'."""
    value, unit = _split(text, "size")
    factor = _SIZE.get(unit.lower()) if unit else None
    if factor is None:
        raise ValueError(f"{text!r}: unknown size unit {unit!r} (use KiB, MiB, GiB, KB, MB, GB)")
    if value <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return int(round(value * factor))


def parse_delay(text: object) -> float:
    """A one-way delay in seconds from '10ms', '250us', '0.1s'."""
    value, unit = _split(text, "delay")
    factor = _TIME.get(unit.lower()) if unit else None
    if factor is None:
        raise ValueError(f"{text!r}: unknown time unit {unit!r} (use us, ms, s)")
    return value * factor
