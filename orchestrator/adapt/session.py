"""What a run does when its world changes: the adapt policies, acting on one worker thread.

Inputs arrive from other threads: a device found lost (the heartbeat), a device leaving (announced
by the scenario before its node stops) or back (after it started again, empty), each scenario
change once applied, and, for `adaptive`, a tick every second with the answers measured since.

- `static` keeps the plan; losing a device the plan uses ends the drive at once with one line
  naming the device, the time and the requests lost.
- `failover` re-plans on the devices left (and again when one comes back) with the costs the run
  planned with, loads the new stages, and resends every request not yet answered.
- `adaptive` is failover, and also re-plans when the conditions measured (link rates from the
  answers, the nodes' counters and probes; step times; never the scenario) have changed, held
  for HOLD_TICKS ticks, and make another plan better by MARGIN; no sooner than DWELL_S after
  the last plan change.
- `oracle` re-plans at every scenario change with the conditions the scenario says are true.

A re-plan holds new requests, places (timed: `replan_s`), cuts, loads every node with the next
plan epoch (frames of the old plan are dropped where they are), resends what is unanswered and
lets requests go again. The links and CPU caps given to the nodes are always the true ones: a
plan chooses where stages run, not what the network does.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from orchestrator.adapt.replan import Placed, Replanner, scaled
from orchestrator.config import Testbed
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import DriveControl, Record
from orchestrator.driving.levels import apply_levels, levels_text
from orchestrator.partition.costmodel import CostTable
from orchestrator.partition.plan import Plan
from orchestrator.runtimes.base import Runtime
from orchestrator.scenario.player import Applied
from orchestrator.scenario.timeline import Conditions

log = logging.getLogger("orchestrator.adapt")

MARGIN = 0.2  # adaptive: another plan must promise this much more throughput
HOLD_TICKS = 2  # ... on this many ticks in a row
DWELL_S = 5.0  # ... and the plan in force must have held this long
TICK_S = 1.0
RECENT = 300  # adaptive: the last answers its estimate reads, whatever plan they ran under


def new_event(kind: str, *, device: str | None, link: str | None, at: float, detail: str) -> dict[str, Any]:
    """One entry of report.json's `events`, its times still to fill in."""
    return {
        "kind": kind,
        "device": device,
        "link": link,
        "detail": detail,
        "at_unix_s": at,
        "applied_unix_s": None,
        "detected_unix_s": None,
        "replanned_unix_s": None,
        "redeployed_unix_s": None,
        "recovered_unix_s": None,
        "replan_s": None,
        "lost": [],
        "resent": [],
    }


@dataclass
class PlanInForce:
    index: int
    plan: Plan
    cuts: list[int]
    devices: list[str]
    from_unix_s: float
    reason: str
    predicted_fps: float | None
    n: int = 0  # positions in the model's node order (the cuts count in them)
    to_unix_s: float | None = None
    levels: dict[str, dict] = field(default_factory=dict)  # the DVFS levels a re-plan put in force (driving.levels)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "from_unix_s": self.from_unix_s,
            "to_unix_s": self.to_unix_s,
            "devices": self.devices,
            "stages": [
                {"index": s.index, "device": s.device, "model": s.model, "blocks": self._span(s.index)}
                for s in self.plan.stages
            ],
            "cuts": self.cuts,
            "reason": self.reason,
            "predicted_fps": self.predicted_fps,
            "folder": str(self.plan.dir),
            "levels": self.levels,
        }

    def _span(self, k: int) -> list[int] | None:
        """The first and last node position stage k runs (None when the plan's length is unknown)."""
        if not self.n or len(self.cuts) != len(self.plan.stages) - 1:
            return None
        bounds = [0, *self.cuts, self.n]
        return [bounds[k], bounds[k + 1] - 1]


@dataclass
class Adaptation:
    policy: str
    runtime: Runtime
    replanner: Replanner
    truth: Conditions  # the world as the scenario made it (updated as changes apply)
    configured: Testbed
    table: CostTable | None
    control: DriveControl
    first: PlanInForce
    console: Console | None = None
    estimate: Callable[[list[Record], PlanInForce, Testbed], tuple[Testbed, dict[str, float]]] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    plans: list[PlanInForce] = field(default_factory=list)
    ended: str = ""  # static: why the run ended early
    id_offset: int = 0  # the run's number for the drive's request 0: lines name requests as report.json does
    ended_unix_s: float | None = None
    caps_in_force: dict[str, float] = field(default_factory=dict)  # devices a plan's level moved off their cpus

    def __post_init__(self) -> None:
        self.plans.append(self.first)
        self.gone: set[str] = set()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._recent: deque[Record] = deque(maxlen=RECENT)
        self._streak = 0
        self._seen_view: ViewKey = frozenset()  # the measured world the plan in force was weighed in
        self._candidate: ViewKey | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="adapt", daemon=True)
        self._worker.start()
        self._ticker: threading.Thread | None = None
        if self.policy == "adaptive":
            self._ticker = threading.Thread(target=self._tick_loop, name="adapt-tick", daemon=True)
            self._ticker.start()

    # -- inputs (any thread) ------------------------------------------------------------------

    @property
    def current(self) -> PlanInForce:
        return self.plans[-1]

    def uses(self, device: str) -> bool:
        return device in self.current.devices or device == self.replanner.source

    def lost(
        self, device: str, last_seen_unix_s: float, detected_unix_s: float, why: str = "", cause: str | None = None
    ) -> None:
        """The heartbeat found a device gone; `cause` is the runtime's word on why, where it has one."""
        detail = why or "no heartbeat"
        ev = self._event("lost", device=device, at=last_seen_unix_s, detail=f"{cause}: {detail}" if cause else detail)
        ev["detected_unix_s"] = detected_unix_s
        if cause:
            ev["cause"] = cause
            self._say(f"[red]device {device} {cause}")
        self._submit(lambda: self._on_gone(device, ev, announced=False))

    def leaving(self, device: str) -> None:
        """A device announces it leaves: returns once the run no longer needs it."""
        done = threading.Event()
        ev = self._event("leave", device=device, at=time.time(), detail="announced")

        def job() -> None:
            try:
                self._on_gone(device, ev, announced=True)
            finally:
                done.set()

        self._submit(job)
        done.wait(120.0)

    def joined(self, device: str) -> None:
        ev = self._event("join", device=device, at=time.time(), detail="back, empty")
        self._submit(lambda: self._on_join(device, ev))

    def applied(self, a: Applied) -> None:
        """A scenario change took effect: the truth moves; the oracle acts on it."""
        if a.error:  # said once, here; the report counts it (scenario.failed) and scenario.jsonl has it
            self._say(f"[yellow]scenario change at {a.change.at_s:g} s ({a.change.kind}) not applied: {a.error}")
            return
        c = a.change
        with self._lock:
            self.truth.apply(c)
        if c.kind == "cpus" and c.device is not None:  # the scenario's cap holds now, not a plan's level
            self.caps_in_force.pop(c.device, None)
        if self.policy == "oracle" and c.kind in ("link", "cpus", "crash"):
            ev = self._event(f"oracle {c.kind}", device=c.device, at=a.scheduled_unix_s, detail="")
            ev["link"] = c.link
            if c.kind == "crash":
                assert c.device is not None
                self._submit(lambda: self._on_gone(c.device, ev, announced=True))
            else:
                self._submit(lambda: self._maybe_replan("oracle", ev, self._oracle_view()))

    def answered(self, rec: Record) -> None:
        """Every answer, as it comes (adaptive reads the recent ones)."""
        if self.policy != "adaptive":
            return
        with self._lock:
            self._recent.append(rec)

    def close(self) -> None:
        if self.current.to_unix_s is None:
            self.current.to_unix_s = time.time()
        self._stop.set()
        self._jobs.put(None)
        self._worker.join(30.0)
        if self._ticker is not None:
            self._ticker.join(5.0)

    # -- the worker ---------------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as e:
                log.exception("adapting")
                self._say(f"[red]adapting failed: {type(e).__name__}: {e}")
                self.control.end(f"adapting failed: {type(e).__name__}: {e}")
                self.ended = self.ended or f"adapting failed: {e}"

    def _event(self, kind: str, *, device: str | None, at: float, detail: str) -> dict[str, Any]:
        ev = new_event(kind, device=device, link=None, at=at, detail=detail)
        with self._lock:
            self.events.append(ev)
        return ev

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
        log.info(text)

    def _on_gone(self, device: str, ev: dict[str, Any], *, announced: bool) -> None:
        if device in self.gone:
            return
        self.gone.add(device)
        used = self.uses(device)
        if not announced:
            ev["lost"] = self._lost_on(device)
        if not used:
            return
        if device == self.replanner.source or self.policy == "static":
            pending = self.control.pending()
            stamp = time.strftime("%H:%M:%S", time.localtime(ev["detected_unix_s"] or ev["at_unix_s"]))
            why = (
                f"device {device} {'left' if announced else ev.get('cause') or 'lost'} at {stamp}"
                + ("" if device != self.replanner.source else " (the source: nothing can go on)")
                + f": {len(pending)} request(s) lost"
                + (f" (ids {_ids([i + self.id_offset for i in pending])})" if pending else "")
            )
            ev["lost"] = pending
            self.ended = why
            self.ended_unix_s = time.time()
            self._say(f"[red]{why}")
            self.control.end(why)
            return
        view = self._oracle_view() if self.policy == "oracle" else self._configured_view()
        self._replan(f"{'leave' if announced else 'lost'} {device}", ev, self._place(view))

    def _on_join(self, device: str, ev: dict[str, Any]) -> None:
        self.gone.discard(device)
        if self.policy == "static" or self.ended:
            return
        view = self._oracle_view() if self.policy == "oracle" else self._configured_view()
        self._maybe_replan(f"join {device}", ev, view)

    def _maybe_replan(self, reason: str, ev: dict[str, Any], view: tuple[Testbed, CostTable | None]) -> None:
        """Place on `view`; redeploy only when the placement differs from the one in force."""
        if self.ended:
            return
        placed = self._place(view)
        ev["replan_s"] = placed.seconds
        ev["replanned_unix_s"] = time.time()
        if placed.key == (tuple(self.current.cuts), tuple(self.current.devices)):
            ev["detail"] = (ev["detail"] + "; " if ev["detail"] else "") + "plan unchanged"
            return
        self._replan(reason, ev, placed)

    def _place(self, view: tuple[Testbed, CostTable | None]) -> Placed:
        testbed, table = view
        return self.replanner.place(testbed, table)

    def _replan(self, reason: str, ev: dict[str, Any], placed: Placed) -> None:
        """Cut and load `placed` as the next plan, resend what is unanswered."""
        self.control.hold()
        try:
            ev["replan_s"] = placed.seconds
            ev["replanned_unix_s"] = time.time()
            index = self.current.index + 1
            with self._lock:
                truth = self.truth.current_testbed()
            live = _without(truth, self.gone)
            plan = self.replanner.write(placed, _without(self.configured, self.gone), self.table, index)
            node_plan = self.runtime.node_plan(plan, plan.dir)
            deploy(node_plan, live, self.runtime.running, self.replanner.source, epoch=index)
            levels = apply_levels(self.runtime, plan, live, self.caps_in_force)
            now = time.time()
            ev["redeployed_unix_s"] = now
            self.current.to_unix_s = now
            self.plans.append(
                PlanInForce(
                    index,
                    plan,
                    list(placed.placement.cuts),
                    list(placed.placement.devices),
                    now,
                    reason,
                    placed.fps,
                    n=placed.graph.n,
                    levels=levels,
                )
            )
            self.control.new_plan()
            resend = self.control.pending()
            ev["resent"] = resend
            self.control.resend(resend)
            self._say(
                f"re-planned ({reason}) in {placed.seconds * 1e3:.0f} ms, loaded in "
                f"{now - ev['replanned_unix_s']:.2f} s: "
                + " > ".join(placed.placement.devices)
                + (f", {len(resend)} request(s) resent" if resend else "")
                + (f"; DVFS levels: {levels_text(levels)}" if levels else "")
            )
        finally:
            self.control.release()

    def _lost_on(self, device: str) -> list[int]:
        """Requests unanswered and held by no device left: those the lost one had."""
        pending = set(self.control.pending())
        held: set[int] = set()
        dep = self.runtime.running
        for d in dep.nodes:
            if d == device or d in self.gone:
                continue
            try:
                held |= set(dep.client(d).stats(timeout_s=1.0).held_ids)
            except Exception:  # another one gone: its requests count as lost too
                continue
        return sorted(pending - held)

    # -- views of the world -------------------------------------------------------------------

    def _configured_view(self) -> tuple[Testbed, CostTable | None]:
        return _without(self.configured, self.gone), self.table

    def _oracle_view(self) -> tuple[Testbed, CostTable | None]:
        with self._lock:
            truth = self.truth.current_testbed()
        factors = {
            d.name: d.cpus / truth.device(d.name).cpus
            for d in self.configured.devices
            if d.name in {x.name for x in truth.devices} and truth.device(d.name).cpus != d.cpus
        }
        return _without(truth, self.gone), scaled(self.table, factors)

    # -- adaptive -----------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            if not self.control.holding and not self.ended:
                self._submit(self._tick)

    def _tick(self) -> None:
        """Re-plan only when the measured world has changed (a link or a device speed moved to
        another bucket), held so for HOLD_TICKS ticks, and another plan beats the one in force by
        MARGIN under it: measurement noise on an unchanged world never moves a plan."""
        if self.estimate is None or self.ended:
            return
        with self._lock:
            recent = list(self._recent)
        if not recent or time.time() - self.current.from_unix_s < TICK_S:
            return
        configured = _without(self.configured, self.gone)
        testbed, factors = self.estimate(recent, self.current, configured)
        key = _view_key(testbed, factors, configured)
        if key == self._seen_view:
            self._candidate, self._streak = None, 0
            return
        self._streak = self._streak + 1 if key == self._candidate else 1
        self._candidate = key
        if self._streak < HOLD_TICKS or time.time() - self.current.from_unix_s < DWELL_S:
            return
        self._seen_view, self._candidate, self._streak = key, None, 0
        table = scaled(self.table, factors)
        placed = self.replanner.place(testbed, table)
        now_fps = self.replanner.fps(placed.graph, self.current.cuts, self.current.devices, testbed, table)
        better = placed.fps is not None and (now_fps is None or placed.fps > now_fps * (1 + MARGIN))
        if not better or placed.key == (tuple(self.current.cuts), tuple(self.current.devices)):
            return
        ev = self._event(
            "measured",
            device=None,
            at=time.time(),
            detail=f"measured {_describe_view(key)}: plan in force {now_fps or 0:.2f} fps, "
            f"another {placed.fps:.2f} fps",
        )
        ev["detected_unix_s"] = ev["at_unix_s"]
        self._replan("measured", ev, placed)


ViewKey = frozenset[tuple[str, ...]]


def _view_key(testbed: Testbed, factors: dict[str, float], configured: Testbed) -> ViewKey:
    """What the measured world differs from the configured one in, coarsely: each link off its
    configured rate by its factor-of-two bucket, each device speed off the table by half steps."""
    names = [d.name for d in configured.devices]
    out: set[tuple[str, ...]] = set()
    for a in names:
        for b in names:
            if a == b:
                continue
            now, conf = testbed.link(a, b).rate_bps, configured.link(a, b).rate_bps
            if now != conf and now > 0:
                out.add(("link", a, b, str(round(math.log2(now / 1e5)))))
    for d, f in factors.items():
        out.add(("speed", d, str(round(f * 2) / 2)))
    return frozenset(out)


def _describe_view(key: ViewKey) -> str:
    parts = [f"{k[1]}->{k[2]} ~{2 ** int(k[3]) * 0.1:g} Mbit/s" for k in key if k[0] == "link"]
    parts += [f"{k[1]} x{k[2]} slower" for k in key if k[0] == "speed"]
    return ", ".join(sorted(parts)) or "conditions as configured"


def _without(testbed: Testbed, gone: set[str]) -> Testbed:
    if not gone:
        return testbed
    return testbed.model_copy(
        update={
            "devices": [d for d in testbed.devices if d.name not in gone],
            "links": [x for x in testbed.links if x.src not in gone and x.dst not in gone],
        }
    )


def _ids(ids: list[int], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > most else "")
