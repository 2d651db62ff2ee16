"""Parse the explicit units of devices.yaml: rates (tc-style), sizes, delays.

Every parser raises ValueError with a short reason; config.py turns that into a line
naming the file and the field.
"""

from __future__ import annotations

import math
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


def shown(value: object, limit: int = 60) -> str:
    """A short repr for messages: a long string is cut, a container is named by its type only (an
    alias bomb in a YAML file is a small list that would print as billions of items)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return "a huge number"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    return f"a {type(value).__name__}"


def _split(text: object, kind: str) -> tuple[float, str]:
    if isinstance(text, bool) or text is None:
        raise ValueError(f"expected a {kind} with a unit, got {shown(text)}")
    if isinstance(text, (int, float)):
        raise ValueError(f"{shown(text)} has no unit; write e.g. {_EXAMPLE[kind]}")
    if not isinstance(text, str):
        raise ValueError(f"expected a {kind} with a unit (e.g. {_EXAMPLE[kind]}), got {shown(text)}")
    m = re.fullmatch(_NUM + r"\s*([A-Za-zµ]*)", text.strip())
    if not m:
        raise ValueError(f"{shown(text)} is not a {kind} (e.g. {_EXAMPLE[kind]})")
    return float(m.group(1)), m.group(2)


def _scaled(text: object, value: float, factor: float, kind: str) -> float:
    """value * factor, refused when it is not a finite number (1e400mbit)."""
    out = value * factor
    if not math.isfinite(out):
        raise ValueError(f"{shown(text)}: too large for a {kind}")
    return out


_EXAMPLE = {"rate": "20mbit", "size": "1GiB", "delay": "10ms"}


def parse_rate(text: object) -> int:
    """A rate in bit/s from '20mbit', '1gbit', '500kbit'."""
    value, unit = _split(text, "rate")
    factor = _RATE.get(unit.lower())
    if factor is None:
        raise ValueError(f"{shown(text)}: unknown rate unit {shown(unit)} (use bit, kbit, mbit, gbit)")
    bps = int(round(_scaled(text, value, factor, "rate")))
    if bps <= 0:  # 0 would read as "not shaped"
        raise ValueError(f"{shown(text)}: a rate must be at least 1 bit/s")
    return bps


def parse_size(text: object) -> int:
    """A size in bytes from '1GiB', '512MiB', '2GB'."""
    value, unit = _split(text, "size")
    factor = _SIZE.get(unit.lower()) if unit else None
    if factor is None:
        raise ValueError(f"{shown(text)}: unknown size unit {shown(unit)} (use KiB, MiB, GiB, KB, MB, GB)")
    size = int(round(_scaled(text, value, factor, "size")))
    if size <= 0:
        raise ValueError(f"{shown(text)}: a size must be at least 1 byte")
    return size


def parse_delay(text: object) -> float:
    """A one-way delay in seconds from '10ms', '250us', '0.1s'."""
    value, unit = _split(text, "delay")
    factor = _TIME.get(unit.lower()) if unit else None
    if factor is None:
        raise ValueError(f"{shown(text)}: unknown time unit {shown(unit)} (use us, ms, s)")
    return _scaled(text, value, factor, "delay")
