"""A drive in a world that changes: the heartbeat that notices lost devices, the policy that
reacts (Adaptation), and the scenario player that changes the world, started and stopped as one.

The heartbeat runs from the start of the drive whatever the job (a device killed from outside is
noticed in every run); the scenario's clock starts with the first measured request."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from common.cpu_quota import silence_limit_s
from orchestrator.adapt.estimate import (
    WINDOW_S,
    Estimate,
    LinkEstimate,
    apply_links,
    link_rates,
    predicted_steps,
    speed_factors,
)
from orchestrator.adapt.events import scenario_events
from orchestrator.adapt.probe import LinkProber
from orchestrator.adapt.replan import Replanner
from orchestrator.adapt.session import Adaptation, PlanInForce
from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient
from orchestrator.driving.driver import DriveControl, Record
from orchestrator.driving.heartbeat import Heartbeat, Lost
from orchestrator.partition.costmodel import CostTable
from orchestrator.partition.plan import Plan
from orchestrator.partition.weights_store import WeightsStore
from orchestrator.runtimes.base import Runtime
from orchestrator.scenario.model import Scenario
from orchestrator.scenario.player import PlayerHooks, ScenarioPlayer
from orchestrator.scenario.timeline import Conditions, timeline


@dataclass
class WorldSetup:
    policy: str
    scenario: Scenario | None
    testbed: Testbed
    replanner: Replanner  # how the run planned: a re-plan places and cuts the same way
    table: CostTable | None
    plan: Plan
    cuts: list[int]
    until_s: float | None  # how long the drive may last (a looping scenario plays that long)
    offsets: dict[str, int]  # node clocks against the orchestrator's (clocks.offsets_ns)
    # the caps the first plan's DVFS levels set (driving.levels): a re-plan moves them on
    caps_in_force: dict[str, float] = field(default_factory=dict)


# a device's measured step within this factor of the table's is taken as the table's: stages
# under a quota and sharing a host run 10-50% over their profile, throttled or not (a CPU share
# halved reads about 2)
SPEED_NOISE = 1.6
LINK_NOISE = 0.5


def at_levels(steps: list[tuple[str, float]], plan: Plan, configured: Testbed) -> list[tuple[str, float]]:
    """Each stage's predicted step at the DVFS level its plan runs it at (the table's are at the
    device's own cpus): a stage at half its device's cpus is expected to take twice as long, not
    read as a device slowed down."""
    out = []
    for (device, step_s), st in zip(steps, plan.stages, strict=False):
        level = st.level if st.device == device else None
        out.append((device, step_s * configured.device(device).cpus / level if level else step_s))
    return out


def estimated_view(
    table: CostTable | None, offsets: dict[str, int], prober: LinkProber
) -> Callable[[list[Record], PlanInForce, Testbed], tuple[Testbed, dict[str, float]]]:
    """What `adaptive` re-plans on (never the scenario): the testbed with the link rates the
    answers show (links the requests cross), the nodes' counters show (a link backlogged now) or
    the probes show (the others, probed as it goes),
    and each device's speed factor where it is clearly off the table. A link measured at
    LINK_NOISE of its configured rate or more is taken at its configured rate: requests crossing a
    link always read somewhat below it (framing, encoding), and only a real fade should move a plan."""

    def view(records: list[Record], current: PlanInForce, configured: Testbed) -> tuple[Testbed, dict[str, float]]:
        now = time.time_ns()
        links, floored = link_rates(records, configured, offsets=offsets, now_ns=now, window_s=WINDOW_S)
        names = [d.name for d in configured.devices]
        idle = [
            (a, b) for a in names for b in names if a != b and ((a, b) not in links or links[(a, b)].age_s > WINDOW_S)
        ]
        read = prober.read(configured)
        for pair in idle:
            if pair in read.probed:
                rate, age = read.probed[pair]
                if pair not in links or age < links[pair].age_s:  # newer than the answers' figure
                    links[pair] = LinkEstimate(rate, 1, age)
        for pair, rate in read.saturated.items():  # backlogged now: what it delivers is its rate
            if pair not in links or links[pair].age_s > 0.5 or rate < links[pair].rate_bps:
                links[pair] = LinkEstimate(rate, 1, 0.0)
        prober.ask(idle)
        for pair, est in list(links.items()):
            conf = configured.link(*pair).rate_bps
            if conf and (est.rate_bps == 0 or est.rate_bps >= conf * LINK_NOISE):
                links[pair] = est._replace(rate_bps=conf)
        speed: dict[str, float] = {}
        if table is not None:
            mine = [r for r in records if r.sent_ns / 1e9 >= current.from_unix_s]
            try:
                steps = at_levels(predicted_steps(table, current.cuts, current.devices), current.plan, configured)
            except (ValueError, KeyError, IndexError):  # a cut the table cannot regroup to: speeds unknown
                steps = []
            if mine and steps:
                speed = speed_factors(mine, steps, offsets=offsets, now_ns=now, window_s=WINDOW_S)
        factors = {d: f for d, f in speed.items() if f > SPEED_NOISE}  # a slowdown (thermal), not noise
        return apply_links(Estimate(links, speed, floored), configured), factors

    return view


class ChangingWorld:
    """Context manager around the measured drive; `control` and `on_start`/`answered` go to it."""

    def __init__(self, setup: WorldSetup, runtime: Runtime, console: Console | None = None):
        self.setup = setup
        self.runtime = runtime
        # every policy holds a request a node gave back as lost (not an answer): `static` ends the
        # run as the loss is detected, naming it among the requests lost, instead of sending more
        self.control = DriveControl(resend_lost=True)
        self.changes = timeline(setup.scenario, setup.testbed, setup.until_s) if setup.scenario else []
        first = PlanInForce(
            0,
            setup.plan,
            list(setup.cuts),
            [s.device for s in setup.plan.stages],
            time.time(),
            "initial",
            setup.plan.predicted.throughput_fps,
            n=WeightsStore().graph(setup.replanner.model).n,
        )
        self.adaptation = Adaptation(
            policy=setup.policy,
            runtime=runtime,
            replanner=setup.replanner,
            truth=Conditions.initial(setup.testbed),
            configured=setup.testbed,
            table=setup.table,
            control=self.control,
            first=first,
            console=console,
            estimate=estimated_view(setup.table, setup.offsets, LinkProber(self._live_clients)),
            caps_in_force=setup.caps_in_force,
        )
        self.heartbeat = Heartbeat(
            clients=self._live_clients,
            on_lost=self._lost,
            dead_after=lambda device: silence_limit_s(
                min(setup.testbed.device(device).cpus, setup.caps_in_force.get(device, math.inf))
            ),
        )
        self.player = ScenarioPlayer(
            self.changes,
            runtime,
            PlayerHooks(leaving=self._leaving, joined=self._joined, applied=self.adaptation.applied),
        )
        self.t0_unix_s: float | None = None

    def _live_clients(self) -> dict[str, NodeClient]:
        dep = self.runtime.running
        return {d: dep.client(d) for d in dep.nodes if d not in self.adaptation.gone}

    def __enter__(self) -> ChangingWorld:
        self.heartbeat.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.player.stop()
        self.heartbeat.__exit__(*exc)
        self.adaptation.close()

    def on_start(self, t0_ns: int) -> None:
        """The first measured request left: the scenario's time 0."""
        self.t0_unix_s = t0_ns / 1e9
        self.adaptation.current.from_unix_s = min(self.adaptation.current.from_unix_s, self.t0_unix_s)
        self.player.start(self.t0_unix_s)

    def answered(self, rec: Record) -> None:
        self.adaptation.answered(rec)

    def _lost(self, lost: Lost) -> None:
        cause = self.runtime.gone_reason(lost.device)  # e.g. "ran out of memory (...)", where the runtime knows
        self.adaptation.lost(lost.device, lost.last_seen_unix_s, lost.detected_unix_s, lost.why, cause=cause)

    def _leaving(self, device: str) -> None:
        self.heartbeat.forget(device)
        self.adaptation.leaving(device)

    def _joined(self, device: str) -> None:
        self.heartbeat.watch(device)
        self.adaptation.joined(device)

    def changes_log(self) -> list[dict[str, Any]]:
        """Every change applied, as scenario.jsonl has it: due, applied, late, what held, or the error."""
        t0 = self.t0_unix_s or 0.0
        return [
            {
                "at_s": a.change.at_s,
                "kind": a.change.kind,
                "device": a.change.device,
                "link": a.change.link,
                "rate_bps": a.change.rate_bps,
                "delay_s": a.change.delay_s,
                "cpus": a.change.cpus,
                "scheduled_unix_s": a.scheduled_unix_s,
                "applied_unix_s": a.applied_unix_s,
                "late_ms": None if a.late_s is None else round(a.late_s * 1e3, 3),
                "applied_s": None if a.applied_unix_s is None else round(a.applied_unix_s - t0, 4),
                "detail": a.detail,
                "error": a.error,
            }
            for a in sorted(self.player.log, key=lambda a: a.scheduled_unix_s)
        ]

    def report(self, id_offset: int) -> dict[str, Any]:
        """report.json's `events`, `plans`, `scenario` and `ended` (request ids as the run numbers them)."""
        return scenario_events(self.player.log, self.adaptation, self.t0_unix_s, id_offset)
