"""Link traces: the rate a link had, second by second, in the two formats public mobility sets use.

- two-column: `seconds rate_mbit_per_s` per line, whitespace-separated (Pensieve's cooked form of
  the Norway HSDPA logs, the Ghent 4G logs); each rate holds until the next line.
- mahimahi: one line per 1500-byte delivery opportunity, a timestamp in ms (several lines may
  share one). We count the opportunities of each 100-ms bin, so the link steps every 100 ms.

The format is told by the content (one integer column: mahimahi; two numbers: two-column) unless
a scenario forces it. Blank lines and `#` comments are skipped. Times start at the first line:
a two-column trace whose first line is at 3 s starts there.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Literal, get_args

from orchestrator.errors import UserError
from orchestrator.units import shown

TraceFormat = Literal["two-column", "mahimahi"]
TRACE_FORMATS: tuple[str, ...] = get_args(TraceFormat)

MAHIMAHI_BIN_S = 0.1  # mahimahi delivery opportunities become 100-ms steps
MAHIMAHI_PACKET_BITS = 1500 * 8  # one delivery opportunity: an MTU-sized packet
MAHIMAHI_MAX_MS = 86_400_000  # a day: one step per 100 ms is 864,000 steps; longer is a broken file
TWO_COLUMN_MAX_MBIT = 1e6  # 1 Tbit/s: above it a rate is a typo, and past 1e302 it is not a number


@dataclass(frozen=True)
class Trace:
    """A step function of rate over time. Before 0 it holds its first rate, after `duration_s` its
    last one (a scenario that loops repeats it; one that does not leaves the link at the last step)."""

    path: Path
    format: TraceFormat
    steps: tuple[tuple[float, int], ...]  # (seconds from the trace start, rate in bit/s); each holds until the next
    duration_s: float  # end of the last step
    _times: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_times", tuple(t for t, _ in self.steps))

    def _index(self, t_s: float) -> int:
        return max(0, bisect.bisect_right(self._times, t_s) - 1)

    def rate_at(self, t_s: float) -> int:
        """The rate in bit/s at t_s seconds from the trace start."""
        return self.steps[self._index(t_s)][1]

    def allowed_bits(self, t0_s: float, t1_s: float) -> float:
        """The bits the trace lets through over [t0_s, t1_s): the integral of its rate."""
        if t1_s <= t0_s:
            return 0.0
        total = 0.0
        i = self._index(t0_s)
        t = t0_s
        while t < t1_s:
            end = self._times[i + 1] if i + 1 < len(self.steps) else math.inf
            seg_end = min(end, t1_s)
            total += self.steps[i][1] * (seg_end - t)
            t = seg_end
            i += 1
        return total


def _fail(path: Path, msg: str, file: str | None, field_: str | None) -> UserError:
    """One line: the scenario (or job) file and field when given, else the trace file itself."""
    if file is None or file == str(path):
        return UserError(msg, str(path), field_)
    return UserError(f"trace {path}: {msg}", file, field_)


def _lines(path: Path, file: str | None, field_: str | None) -> list[tuple[int, list[str]]]:
    try:
        if not path.exists():
            raise _fail(path, "trace file not found", file, field_)
        if path.is_dir():
            raise _fail(path, "is a folder, not a trace file", file, field_)
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # unreadable, a NUL byte or an over-long name, not UTF-8
        reason = "not a text file" if isinstance(e, UnicodeDecodeError) else f"cannot read: {e}"
        raise _fail(path, reason, file, field_) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append((n, line.split()))
    if not out:
        raise _fail(path, "empty trace: no steps", file, field_)
    return out


def _is_ms(text: str) -> bool:
    """A mahimahi timestamp: ASCII digits ('²'.isdigit() is true, but int() refuses it)."""
    return text.isascii() and text.isdigit()


def detect_format(rows: list[tuple[int, list[str]]]) -> TraceFormat:
    """Mahimahi when every line is one integer, two-column otherwise (its errors then say why)."""
    if all(len(parts) == 1 and _is_ms(parts[0]) for _, parts in rows):
        return "mahimahi"
    return "two-column"


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _two_column(path: Path, rows: list[tuple[int, list[str]]], file: str | None, field_: str | None) -> Trace:
    points: list[tuple[float, float]] = []
    for n, parts in rows:
        if len(parts) != 2:
            raise _fail(
                path, f"line {n}: expected two numbers (seconds, Mbit/s), got {len(parts)} fields", file, field_
            )
        t, mbit = _number(parts[0]), _number(parts[1])
        if t is None or mbit is None:
            raise _fail(path, f"line {n}: {shown(' '.join(parts))} is not two numbers (seconds, Mbit/s)", file, field_)
        if t < 0 or mbit < 0:
            raise _fail(path, f"line {n}: times and rates cannot be negative", file, field_)
        if mbit > TWO_COLUMN_MAX_MBIT:
            raise _fail(path, f"line {n}: {mbit:g} Mbit/s is above {TWO_COLUMN_MAX_MBIT:g} Mbit/s", file, field_)
        if points and t <= points[-1][0]:
            raise _fail(path, f"line {n}: time {t:g} s does not follow {points[-1][0]:g} s", file, field_)
        points.append((t, mbit))
    t0 = points[0][0]
    steps = tuple((t - t0, int(round(mbit * 1e6))) for t, mbit in points)
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:], strict=False)]
    last = median(gaps) if gaps else 1.0  # a one-line trace: one second
    return Trace(path, "two-column", steps, steps[-1][0] + last)


def _mahimahi(path: Path, rows: list[tuple[int, list[str]]], file: str | None, field_: str | None) -> Trace:
    stamps: list[int] = []
    for n, parts in rows:
        if len(parts) != 1 or not _is_ms(parts[0]):
            raise _fail(path, f"line {n}: expected one timestamp in ms, got {shown(' '.join(parts))}", file, field_)
        digits = parts[0].lstrip("0") or "0"  # int() refuses more than 4300 digits: compare lengths first
        if len(digits) > len(str(MAHIMAHI_MAX_MS)) or int(digits) > MAHIMAHI_MAX_MS:
            raise _fail(path, f"line {n}: timestamp past {MAHIMAHI_MAX_MS} ms (a day)", file, field_)
        ms = int(digits)
        if stamps and ms < stamps[-1]:
            raise _fail(path, f"line {n}: timestamp {ms} ms comes before {stamps[-1]} ms", file, field_)
        stamps.append(ms)
    if stamps[-1] <= 0:
        raise _fail(path, "the last timestamp must be after 0 ms (it is the trace's period)", file, field_)
    bin_ms = int(round(MAHIMAHI_BIN_S * 1000))
    bins = math.ceil(stamps[-1] / bin_ms)
    counts = [0] * bins
    for ms in stamps:  # an opportunity on the last bin's end belongs to that bin
        counts[min(ms // bin_ms, bins - 1)] += 1
    steps = tuple(
        (round(k * MAHIMAHI_BIN_S, 6), int(round(c * MAHIMAHI_PACKET_BITS / MAHIMAHI_BIN_S)))
        for k, c in enumerate(counts)
    )
    return Trace(path, "mahimahi", steps, round(bins * MAHIMAHI_BIN_S, 6))


def read_trace(
    path: Path, fmt: TraceFormat | None = None, *, file: str | None = None, field: str | None = None
) -> Trace:
    """Read a trace file; the format by its content unless `fmt` is given. Bad files raise a
    UserError naming `file` and `field` (the scenario's), or the trace file itself."""
    path = Path(path)
    if fmt is not None and fmt not in TRACE_FORMATS:
        raise _fail(path, f"unknown trace format {fmt!r} ({', '.join(TRACE_FORMATS)})", file, field)
    rows = _lines(path, file, field)
    fmt = fmt or detect_format(rows)
    return _mahimahi(path, rows, file, field) if fmt == "mahimahi" else _two_column(path, rows, file, field)
