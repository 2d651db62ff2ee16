"""The run folder's per-request files: latencies.csv for people and spreadsheets, requests.jsonl with
every raw stamp so that `orchestrator report` can redraw the run; and reading them back."""

from __future__ import annotations

import csv
import json
from dataclasses import astuple
from pathlib import Path

from orchestrator.driving.driver import Record, Timing
from orchestrator.figures.metrics import HopSample
from orchestrator.runtimes.stats import StatsLine


def write_latencies(
    path: Path, records: list[Record], samples: list[HopSample], num_stages: int, measured_ids: set[int]
) -> None:
    """One row per request: id, send time, per-stage compute, per-hop transfer, end-to-end."""
    hop_names: list[str] = []
    by_id: dict[int, dict[str, float]] = {}
    for h in samples:
        by_id.setdefault(h.id, {})[f"hop_{h.src}_to_{h.dst}_ms"] = h.transfer_ms
    rows = []
    for r in records:
        comp = {t.stage: (t.end_ns - t.start_ns) / 1e6 for t in r.timings if 0 <= t.stage < num_stages}
        hops = by_id.get(r.id, {})
        for h in hops:
            if h not in hop_names:
                hop_names.append(h)
        rows.append((r, comp, hops))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "id",
                "measured",
                "send_time_s",
                *[f"stage_{k}_compute_ms" for k in range(num_stages)],
                *hop_names,
                "end_to_end_ms",
                "error",
            ]
        )
        for r, comp, hops in rows:
            w.writerow(
                [
                    r.id,
                    int(r.id in measured_ids),
                    f"{r.intended_ns / 1e9:.6f}",
                    *[f"{comp[k]:.3f}" if k in comp else "" for k in range(num_stages)],
                    *[f"{hops[h]:.3f}" if h in hops else "" for h in hop_names],
                    f"{r.latency_ms:.3f}" if r.done_ns else "",
                    r.error,
                ]
            )


def write_requests(path: Path, records: list[Record], measured_ids: set[int]) -> None:
    """Every request's raw stamps, so that `orchestrator report` can redraw the run."""
    with open(path, "w") as f:
        for r in records:
            f.write(
                json.dumps(
                    {
                        "id": r.id,
                        "key": r.key,
                        "measured": r.id in measured_ids,
                        "intended_ns": r.intended_ns,
                        "sent_ns": r.sent_ns,
                        "done_ns": r.done_ns,
                        "error": r.error,
                        "timings": [list(astuple(t)) for t in r.timings],  # Timing's fields, in order
                    }
                )
                + "\n"
            )


def write_changes(path: Path, changes: list[dict]) -> None:
    """scenario.jsonl: every change a scenario applied, one line each, in the order applied."""
    with open(path, "w") as f:
        for c in changes:
            f.write(json.dumps(c) + "\n")


def read_requests(path: Path) -> tuple[list[Record], set[int]]:
    """The records written by write_requests, and which of them were measured."""
    records, measured = [], set()
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        r = Record(id=d["id"], sent_ns=d["sent_ns"], key=d["key"], intended_ns=d["intended_ns"])
        r.done_ns, r.error = d["done_ns"], d["error"]
        r.timings = [Timing(*t) for t in d["timings"]]
        records.append(r)
        if d["measured"]:
            measured.add(r.id)
    return records, measured


def read_stats(stats_dir: Path) -> dict[str, list[StatsLine]]:
    """Per device, the stats samples of the run folder's stats/<device>.jsonl."""
    return {
        p.stem: [StatsLine.from_json(line) for line in p.read_text().splitlines() if line.strip()]
        for p in sorted(Path(stats_dir).glob("*.jsonl"))
    }
