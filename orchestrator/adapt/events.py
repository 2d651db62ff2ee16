"""The run's `events`: what the scenario did and what the run saw and did about it, merged into
one entry per scenario event (a trace's many steps are one event) or per thing observed.

A crash the scenario applied and the loss the heartbeat detected are one event: the crash's
`at_unix_s`/`applied_unix_s`, the detection's `detected_unix_s`, and the re-plan's times. A leave,
a join, and an oracle's re-plan on a change merge the same way."""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.adapt.session import Adaptation, new_event
from orchestrator.scenario.player import Applied

_MERGES = {
    "lost": ("crash",),
    "leave": ("leave",),
    "join": ("join",),
    "oracle link": ("link",),
    "oracle cpus": ("cpus",),
}
_STAMPS = ("detected_unix_s", "replanned_unix_s", "redeployed_unix_s", "replan_s")


def _scenario_event(group: list[Applied]) -> dict[str, Any]:
    first = group[0]
    c = first.change
    late = [a.late_s for a in group if a.late_s is not None]
    detail = first.detail if len(group) == 1 else f"{len(group)} steps, first: {first.detail}"
    return new_event(c.kind, device=c.device, link=c.link, at=first.scheduled_unix_s, detail=detail) | {
        "applied_unix_s": first.applied_unix_s,
        "scenario_event": c.event,
        "steps": len(group),
        "late_ms_max": round(max(late) * 1e3, 2) if late else None,
        "errors": [a.error for a in group if a.error][:5],
    }


def scenario_events(applied: list[Applied], adaptation: Adaptation, t0_unix_s: float | None, id_offset: int) -> dict:
    groups: dict[tuple[int, str | None, str | None], list[Applied]] = {}
    for a in sorted(applied, key=lambda a: a.scheduled_unix_s):
        groups.setdefault((a.change.event, a.change.device, a.change.link), []).append(a)
    events = [_scenario_event(g) for g in groups.values()]
    for seen in adaptation.events:
        seen = dict(seen)
        seen["lost"] = [i + id_offset for i in seen["lost"]]
        seen["resent"] = [i + id_offset for i in seen["resent"]]
        target = None
        for ev in events:
            same = ev["device"] == seen["device"] and (seen["link"] is None or ev["link"] == seen["link"])
            if ev["kind"] in _MERGES.get(seen["kind"], ()) and same:
                if ev["detected_unix_s"] is None and ev["at_unix_s"] <= seen["at_unix_s"] + 1.0:
                    target = ev
        if seen["kind"].startswith("oracle") and target is None:
            continue  # an oracle re-plan on a change that merged nowhere (a later trace step): in plans
        if target is None:
            events.append(seen)
            continue
        for k in _STAMPS:
            if seen[k] is not None:
                target[k] = seen[k]
        target["lost"] += seen["lost"]
        target["resent"] += seen["resent"]
        if seen["detail"]:
            target["detail"] += f"; {seen['detail']}"
    events.sort(key=lambda e: e["at_unix_s"])
    # lateness of the changes that are meant to be instant (a link, a CPU cap); a crash, a leave or
    # a join takes what stopping or starting a node takes, and says so in its own event
    late = np.array([a.late_s for a in applied if a.late_s is not None and a.change.kind in ("link", "cpus")]) * 1e3
    return {
        "events": events,
        "plans": [p.to_json() for p in adaptation.plans],
        "adapt": adaptation.policy,
        "ended": adaptation.ended or None,
        "ended_unix_s": adaptation.ended_unix_s,
        "scenario": {
            "t0_unix_s": t0_unix_s,
            "changes": len(applied),
            "failed": sum(1 for a in applied if a.error),
            "late_ms": None
            if not late.size
            else {
                "p50": round(float(np.percentile(late, 50)), 2),
                "p99": round(float(np.percentile(late, 99)), 2),
                "max": round(float(late.max()), 2),
            },
        },
    }
