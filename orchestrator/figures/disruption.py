"""What a scenario's events did to the run: how long until throughput settled again, how far the
latency tail rose, and the rows the console and report.md show per event and per plan.

Everything here reads the report's `events` and `plans` and the request records; times are unix
seconds (the driver's clock), shown relative to the event, or to the first measured request (the
scenario's own time origin)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from orchestrator.driving.driver import Record

RECOVERY_TOLERANCE = 0.10  # a 1-s window within 10% of the new steady level
RECOVERY_HOLD_S = 3  # ... and the windows after it, for this many seconds
SPIKE_WINDOW_S = 5.0  # latency tail compared over this long before and after an event


def answered(records: Iterable[Record], measured_ids: set[int] | None = None) -> list[Record]:
    """The requests (of measured_ids, where given) that came back with an answer: lost or failed
    ones have no latency and add no throughput."""
    return [r for r in records if r.done_ns and not r.error and (measured_ids is None or r.id in measured_ids)]


def measured_t0_s(records: Iterable[Record], measured_ids: set[int] | None = None) -> float | None:
    """When the first measured request was due: the origin of the scenario's times."""
    sent = [r.intended_ns for r in records if measured_ids is None or r.id in measured_ids]
    return min(sent) / 1e9 if sent else None


def _windows(done: list[Record], batch: int) -> tuple[float, list[float]]:
    """Throughput per 1-s window and the unix second the first window opens: the windows of
    figures.latency.per_second (whole seconds from the first answer), counted without the
    percentiles it also computes (about 0.1 s a window: too slow to repeat for every event)."""
    done_s = np.array([r.done_ns for r in done], dtype=np.int64) / 1e9
    t0 = float(done_s.min())
    return t0, [float(n * batch) for n in np.bincount((done_s - t0).astype(np.int64))]


def recovery(
    records: list[Record],
    event_unix_s: float,
    until_unix_s: float | None = None,
    *,
    batch: int = 1,
    tolerance: float = RECOVERY_TOLERANCE,
    hold_s: int = RECOVERY_HOLD_S,
) -> float | None:
    """The start of the first 1-s window after the event from which throughput stays within
    `tolerance` of its new steady level for `hold_s` seconds; None when it never does, or when
    too little of the run (up to `until_unix_s`, the next event, else the last answer) follows.

    Windows are those of the run's per-second figures (whole seconds from the first answer); only
    windows that start at or after the event and end by `until_unix_s` count. The steady level is
    the median of the last half of them, where throughput has settled if it ever does; a level of
    zero (nothing answered any more) is no recovery. A window counts whole requests, so at a few
    requests a second the tolerance is at least one request (`batch` images) either way."""
    done = answered(records)
    if not done:
        return None
    t0, fps = _windows(done, batch)
    end = max(r.done_ns for r in done) / 1e9
    end = min(end, until_unix_s) if until_unix_s is not None else end
    first = max(0, math.ceil(event_unix_s - t0 - 1e-9))
    after = [(k, fps[k]) for k in range(first, len(fps)) if t0 + k + 1 <= end + 1e-9]
    if len(after) < hold_s:
        return None
    level = float(np.median([v for _, v in after[len(after) // 2 :]]))
    if level <= 0:
        return None
    band = max(tolerance * level, batch)
    near = [abs(v - level) <= band for _, v in after]
    for i in range(len(after) - hold_s + 1):
        if all(near[i : i + hold_s]):
            return round(t0 + after[i][0], 3)
    return None


def latency_spike(
    records: list[Record], event_unix_s: float, window_s: float = SPIKE_WINDOW_S
) -> tuple[float | None, float | None]:
    """p99 latency (ms) of the requests answered in the `window_s` before the event and in the
    `window_s` after it; None for a side with no answer."""
    done = answered(records)

    def p99(lo: float, hi: float) -> float | None:
        ms = [r.latency_ms for r in done if lo <= r.done_ns / 1e9 < hi]
        return round(float(np.percentile(ms, 99)), 3) if ms else None

    return p99(event_unix_s - window_s, event_unix_s), p99(event_unix_s, event_unix_s + window_s)


def _next_start(e: dict, events: list[dict]) -> float | None:
    """When the next event after `e` begins, where its recovery window ends. The observed loss of
    the device `e` took away is `e`'s own consequence, not a new event: it does not end it."""
    later = [
        x["at_unix_s"]
        for x in events
        if x["at_unix_s"] > e["at_unix_s"] and not (x["kind"] == "lost" and x.get("device") == e.get("device"))
    ]
    return min(later, default=None)


def fill_recovery(
    events: list[dict], records: list[Record], measured_ids: set[int] | None = None, batch: int = 1
) -> list[dict]:
    """The events, each a new dict with `recovered_unix_s` (recovery up to the next event) and
    `p99_before_ms` / `p99_after_ms` (latency_spike) added; `events` is left as it is."""
    done = answered(records, measured_ids)
    out = []
    for e in events:
        before, after = latency_spike(done, e["at_unix_s"])
        out.append(
            e
            | {
                "recovered_unix_s": recovery(done, e["at_unix_s"], _next_start(e, events), batch=batch),
                "p99_before_ms": before,
                "p99_after_ms": after,
            }
        )
    return out


def disruption_figures(
    events: list[dict], plans: list[dict], records: list[Record], measured_ids: set[int], batch: int = 1
) -> dict:
    """The report's disruption keys: `events` with recovery and latency spikes filled in, `plans`
    as given, and `events_t0_unix_s` (the first measured request, the scenario's time origin)."""
    return {
        "events": fill_recovery(events, records, measured_ids, batch),
        "plans": [dict(p) for p in plans],
        "events_t0_unix_s": measured_t0_s(records, measured_ids),
    }


def time_origin(report: dict) -> float:
    """The unix second tables and plots count from: the scenario's origin (`scenario.t0_unix_s`),
    else the first measured request (`events_t0_unix_s`), else the first plan or event."""
    t0 = (report.get("scenario") or {}).get("t0_unix_s")
    if t0 is None:
        t0 = report.get("events_t0_unix_s")
    if t0 is not None:
        return t0
    starts = [p["from_unix_s"] for p in report.get("plans") or []] + [e["at_unix_s"] for e in report["events"]]
    return min(starts, default=0.0)


def _since(t: float | None, at: float, scale: float) -> float | None:
    return None if t is None else round((t - at) * scale, 3)


def disruption_rows(report: dict) -> list[dict]:
    """One row per event, in time order: what and where, when (s from the first measured request),
    and each step after it as a delay from the event (ms; recovery in s), requests lost and resent,
    p99 latency before and after."""
    t0 = time_origin(report)
    rows = []
    for e in sorted(report.get("events") or [], key=lambda e: e["at_unix_s"]):
        at = e["at_unix_s"]
        rows.append(
            {
                "kind": e["kind"],
                "where": e.get("link") or e.get("device") or "",
                "detail": e.get("detail") or "",
                "at_s": round(at - t0, 3),
                "applied_ms": _since(e.get("applied_unix_s"), at, 1e3),
                "detected_ms": _since(e.get("detected_unix_s"), at, 1e3),
                "replanned_ms": _since(e.get("replanned_unix_s"), at, 1e3),
                "replan_ms": None if e.get("replan_s") is None else round(e["replan_s"] * 1e3, 3),
                "redeployed_ms": _since(e.get("redeployed_unix_s"), at, 1e3),
                "recovered_s": _since(e.get("recovered_unix_s"), at, 1.0),
                "lost": len(e.get("lost") or []),
                "resent": len(e.get("resent") or []),
                "p99_before_ms": e.get("p99_before_ms"),
                "p99_after_ms": e.get("p99_after_ms"),
            }
        )
    return rows


def stage_part(stage: dict) -> str:
    """A plan stage's part of the model in words: `blocks 0-5`, or `40% of compute`."""
    if stage.get("blocks") is not None:
        first, last = stage["blocks"]
        return f"blocks {first}-{last}"
    if stage.get("share") is not None:
        return f"{stage['share']:.0%} of compute"
    return ""


def plan_rows(report: dict) -> list[dict]:
    """One row per plan in force, in order: its interval (s from the first measured request; `to_s`
    None while it held to the end), why it was made, stages in order with their part of the model,
    and the throughput it predicted."""
    t0 = time_origin(report)
    return [
        {
            "index": p["index"],
            "from_s": round(p["from_unix_s"] - t0, 3),
            "to_s": None if p.get("to_unix_s") is None else round(p["to_unix_s"] - t0, 3),
            "reason": p.get("reason") or "",
            "stages": " > ".join(f"{s['device']} ({stage_part(s)})".replace(" ()", "") for s in p["stages"]),
            "predicted_fps": p.get("predicted_fps"),
        }
        for p in sorted(report.get("plans") or [], key=lambda p: p["index"])
    ]


def _after(v: float | None, unit: str, fmt: str) -> str:
    return "-" if v is None else f"+{v:{fmt}} {unit}"


def event_title(row: dict) -> str:
    """`crash phone at 40.0 s`: an event row named in a few words."""
    return f"{row['kind']} {row['where']} at {row['at_s']:.1f} s".replace("  ", " ")


def event_text(row: dict) -> str:
    """An event row's steps in one line, for a summary table's value column."""
    parts = [
        f"applied {_after(row['applied_ms'], 'ms', '.0f')}",
        f"detected {_after(row['detected_ms'], 'ms', '.0f')}",
        f"re-planned {_after(row['replanned_ms'], 'ms', '.0f')}",
        f"redeployed {_after(row['redeployed_ms'], 'ms', '.0f')}",
        f"recovered {_after(row['recovered_s'], 's', '.1f')}",
        f"{row['lost']} lost, {row['resent']} resent",
    ]
    return ", ".join(p for p in parts if not p.endswith(" -"))


def plan_text(row: dict) -> str:
    """A plan row in one line: `+0.0 s to +40.4 s: phone (blocks 0-5) > laptop (blocks 6-11), initial`."""
    until = "end" if row["to_s"] is None else f"{row['to_s']:+.1f} s"
    fps = f", predicted {row['predicted_fps']:.2f} images/s" if row.get("predicted_fps") else ""
    return f"{row['from_s']:+.1f} s to {until}: {row['stages']} ({row['reason']}{fps})"


HEADLINE_EVENTS_MAX = 12  # beyond this many events, a summary names link changes in one count


def headline_events(rows: list[dict], most: int = HEADLINE_EVENTS_MAX) -> tuple[list[dict], int]:
    """The event rows a summary names one by one, and how many link changes it leaves to one count:
    a trace's dozens of steps would bury the few events that matter."""
    if len(rows) <= most:
        return rows, 0
    kept = [r for r in rows if r["kind"] != "link"]
    return kept, len(rows) - len(kept)


def _count(v) -> int:
    return len(v) if isinstance(v, list | tuple | set) else int(v or 0)


def lost_resent(report: dict) -> tuple[int, int] | None:
    """Requests lost and resent in the run (the report's `lost` and `resent`), None where it has neither."""
    if report.get("lost") is None and report.get("resent") is None:
        return None
    return _count(report.get("lost")), _count(report.get("resent"))
