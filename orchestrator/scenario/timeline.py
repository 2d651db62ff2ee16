"""A scenario unrolled into the changes to apply, in time order, and the world they make.

The run applies `timeline()` one change at a time; an oracle plans on `Conditions`, the truth
the scenario file states (never what was measured).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.config import Link, LinkParams, Testbed
from orchestrator.scenario.model import EVERY_PEER, Event, Scenario

ChangeKind = Literal["link", "cpus", "leave", "crash", "join"]

# A trace's zero: the link crawls (its queue holds the frames) rather than drops them or goes
# unshaped, so a transfer resumes when the trace does. Not slower: htb charges every frame it lets
# through at the class's rate, as time, and `tc class change` keeps that debt (the kernel sets a
# class's tokens only when it creates it), so the one frame (or two-frame TCP lump) sent at the
# crawl blocks the link for its whole time at the crawl rate after the trace comes back: 3 s at 8
# kbit, 0.24 s at 100 kbit.
HELD_RATE_BPS = 100_000


@dataclass(frozen=True)
class Change:
    """One change to apply, at a time from the first measured request."""

    at_s: float
    kind: ChangeKind
    event: int  # index of the scenario event it comes from
    device: str | None = None  # cpus / leave / crash / join
    src: str | None = None  # link
    dst: str | None = None
    rate_bps: int | None = None  # link: new rate (None: unchanged; 0: the trace holds zero: the link queues)
    delay_s: float | None = None  # link: new one-way delay (None: unchanged)
    cpus: float | None = None

    @property
    def link(self) -> str | None:
        """'a->b' for a link change."""
        return f"{self.src}->{self.dst}" if self.kind == "link" else None


def _peers(event: Event, testbed: Testbed) -> list[str]:
    assert event.link is not None
    if event.link.to != EVERY_PEER:
        return [event.link.to]
    return [d.name for d in testbed.devices if d.name != event.link.from_]


def _event_changes(
    scenario: Scenario, index: int, event: Event, testbed: Testbed, start: float, end: float
) -> list[Change]:
    """The changes of one event in the repetition that starts at `start`, those before `end`."""
    at = start + event.at
    if at >= end:
        return []
    if event.link is None:
        if event.cpus is not None:
            return [Change(at, "cpus", index, device=event.device, cpus=event.cpus)]
        return [Change(at, event.action, index, device=event.device)]  # type: ignore[arg-type]
    src, peers = event.link.from_, _peers(event, testbed)
    if event.trace is None:
        return [Change(at, "link", index, src=src, dst=p, rate_bps=event.bandwidth, delay_s=event.delay) for p in peers]
    out: list[Change] = []
    last: int | None = None
    for t, rate in scenario.trace(index).steps:
        if at + t >= end:
            break
        if rate == last:  # the same rate again: nothing changes
            continue
        last = rate
        out.extend(Change(at + t, "link", index, src=src, dst=p, rate_bps=rate) for p in peers)
    return out


def timeline(scenario: Scenario, testbed: Testbed, until_s: float | None = None) -> list[Change]:
    """Every change of the scenario in time order (events at one time keep the file's order):
    traces become one link change per step, `to: "*"` one change per other device, and a
    scenario that loops repeats every `period_s()` until `until_s` (required then). Only changes
    before `until_s` when it is given."""
    if scenario.loop and until_s is None:
        raise ValueError("a scenario that loops needs until_s: it never ends by itself")
    end = until_s if until_s is not None else float("inf")
    period = scenario.period_s() if scenario.loop else float("inf")
    out: list[Change] = []
    rep = 0
    while True:
        start = rep * period if scenario.loop else 0.0
        if start >= end:
            break
        stop = min(end, start + period) if scenario.loop else end
        for i, e in enumerate(scenario.events):
            out.extend(_event_changes(scenario, i, e, testbed, start, stop))
        if not scenario.loop:
            break
        rep += 1
    out.sort(key=lambda c: c.at_s)  # stable: repetition, then event, then step order at one time
    return out


def link_changes(changes: Iterable[Change]) -> list[Change]:
    """The link changes only."""
    return [c for c in changes if c.kind == "link"]


@dataclass
class Conditions:
    """The world as the scenario says it is at some time: what an oracle knows. A device that
    joins comes back as configured (a fresh container): its CPU share and its own egress links."""

    testbed: Testbed
    links: dict[tuple[str, str], LinkParams]
    cpus: dict[str, float]
    gone: set[str] = field(default_factory=set)
    changed: set[tuple[str, str]] = field(default_factory=set)  # links a change touched

    @classmethod
    def initial(cls, testbed: Testbed) -> Conditions:
        names = [d.name for d in testbed.devices]
        links = {(a, b): testbed.link(a, b) for a in names for b in names if a != b}
        return cls(testbed, links, {d.name: d.cpus for d in testbed.devices})

    def apply(self, change: Change) -> None:
        """Take one change into account (a rate of 0 is the held crawl, HELD_RATE_BPS)."""
        if change.kind == "link":
            key = (str(change.src), str(change.dst))
            now = self.links[key]
            rate = now.rate_bps if change.rate_bps is None else (change.rate_bps or HELD_RATE_BPS)
            delay = now.delay_s if change.delay_s is None else change.delay_s
            self.links[key] = LinkParams(rate_bps=rate, delay_s=delay)
            self.changed.add(key)
        elif change.kind == "cpus":
            self.cpus[str(change.device)] = float(change.cpus or 0.0)
        elif change.kind in ("leave", "crash"):
            self.gone.add(str(change.device))
        elif change.kind == "join":
            dev = str(change.device)
            self.gone.discard(dev)
            self.cpus[dev] = self.testbed.device(dev).cpus
            for key in [k for k in self.links if k[0] == dev]:
                self.links[key] = self.testbed.link(*key)
                self.changed.discard(key)

    def current_testbed(self) -> Testbed:
        """The testbed as it is now: devices not gone, CPU shares as now, a `links` entry for
        each changed link (a manual plan's partition points on a gone device are dropped)."""
        here = [d for d in self.testbed.devices if d.name not in self.gone]
        devices = [d.model_copy(update={"cpus": self.cpus[d.name]}) for d in here]
        names = {d.name for d in here}
        links = [
            link
            for link in self.testbed.links
            if link.src in names and link.dst in names and (link.src, link.dst) not in self.changed
        ]
        for (a, b), p in sorted(self.links.items()):
            if (a, b) in self.changed and a in names and b in names:
                spec = {"from": a, "to": b, "delay": f"{p.delay_s!r}s"}
                if p.rate_bps:
                    spec["bandwidth"] = f"{p.rate_bps}bit"
                links.append(Link.model_validate(spec))
        points = [p for p in self.testbed.partition_points if p.device_name is None or p.device_name in names]
        return self.testbed.model_copy(update={"devices": devices, "links": links, "partition_points": points})
