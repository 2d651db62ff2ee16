"""Write traces/train_hsdpa.txt and traces/train_hsdpa.mahi: a synthetic, seeded train ride.

Modelled on the public mobility trace sets (Pensieve's cooked form of the Norway HSDPA
bus/tram/train/ferry/metro logs, the Ghent 4G logs): about 90 s, rates of 0.1-6 Mbit/s, steps
0.2-3 s apart, a few moments at zero (tunnels, cuttings). It is made here, not copied from those
sets: the same shape, our own numbers. The same seed writes the same bytes.

- train_hsdpa.txt: two columns, `seconds Mbit/s`, one step per line, each holding until the next.
- train_hsdpa.mahi: Mahimahi's format, one line per 1500-byte delivery opportunity (ms): the
  same steps, opportunities spread evenly within each.

    python scripts/make_traces.py [--seed 9] [--out traces]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from statistics import median

DURATION_S = 90.0
MIN_MBIT, MAX_MBIT = 0.1, 6.0
STEP_S = (0.2, 3.0)
ZERO_S = (0.6, 2.0)  # how long a zero moment lasts
ZEROS = 3
PACKET_BITS = 1500 * 8


def steps(seed: int) -> list[tuple[float, float]]:
    """(start in s, Mbit/s): a random walk of the log-rate, pulled to the middle, with a few zero moments."""
    rng = random.Random(seed)
    lo, hi = math.log(MIN_MBIT), math.log(MAX_MBIT)
    mid = (lo + hi) / 2 + 0.8
    # the zero moments: spread over the ride, away from its ends
    zero_at = sorted(
        rng.uniform(12 + i * (DURATION_S - 24) / ZEROS, 12 + (i + 0.7) * (DURATION_S - 24) / ZEROS)
        for i in range(ZEROS)
    )
    out: list[tuple[float, float]] = []
    t, level = 0.0, mid
    while t < DURATION_S - 1.0:
        if zero_at and t >= zero_at[0]:
            zero_at.pop(0)
            out.append((t, 0.0))
            t += rng.uniform(*ZERO_S)
            level = lo + 0.3  # coming out of a tunnel: a low rate first
            continue
        level += rng.gauss(0.0, 0.55) + 0.15 * (mid - level)
        level = min(hi, max(lo, level))
        out.append((t, math.exp(level)))
        t += rng.uniform(*STEP_S)
    return [(round(a, 3), round(r, 4)) for a, r in out]


def two_column(rows: list[tuple[float, float]]) -> str:
    return "".join(f"{t:.3f} {r:.4f}\n" for t, r in rows)


def end_s(rows: list[tuple[float, float]]) -> float:
    """Where a reader of the two-column file ends it: the last step plus the median step."""
    return round(rows[-1][0] + median(b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)), 3)


def mahimahi(rows: list[tuple[float, float]], end_s: float) -> str:
    """Delivery opportunities (ms) for the steps, until end_s: each step's bits as whole packets,
    carried over from one step to the next, so that the total matches the rates."""
    lines: list[int] = []
    owed = 0.0  # bits allowed but not yet a whole packet
    bounds = [t for t, _ in rows[1:]] + [end_s]
    for (t0, rate), t1 in zip(rows, bounds, strict=True):
        ms0, ms1 = int(round(t0 * 1000)), int(round(t1 * 1000))
        per_ms = rate * 1e6 / 1000
        for ms in range(ms0, ms1):
            owed += per_ms
            while owed >= PACKET_BITS:
                owed -= PACKET_BITS
                lines.append(ms)
    last = int(round(end_s * 1000))
    if not lines or lines[-1] < last - 1:  # the last line is the period: end it at the ride's end
        lines.append(last - 1)
    return "".join(f"{ms}\n" for ms in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "traces")
    a = ap.parse_args()
    rows = steps(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "train_hsdpa.txt").write_text(two_column(rows))
    (a.out / "train_hsdpa.mahi").write_text(mahimahi(rows, end_s(rows)))
    print(f"wrote {a.out / 'train_hsdpa.txt'} ({len(rows)} steps) and {a.out / 'train_hsdpa.mahi'}")


if __name__ == "__main__":
    main()
