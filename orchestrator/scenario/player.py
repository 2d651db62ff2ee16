"""Play a scenario's timeline against running nodes: each change at its time, through the runtime.

Link and CPU changes run on one thread and device actions on another, so a leave that waits for
a re-plan never makes a trace step late. Each change is logged with the time it was due and the
time it took effect (`Applied`); a change that fails is logged with its error and the play goes
on (a link to a device that has crashed cannot be changed, and need not be).

The run hears of what happens through `PlayerHooks`: a leave is announced before the node stops
(the run re-plans away from it first), a join after the node is back, every change once applied.
A crash is not announced: the run has to notice it, as it would a real one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from orchestrator.runtimes.base import Runtime
from orchestrator.scenario.timeline import Change

log = logging.getLogger("orchestrator.scenario.player")


@dataclass
class Applied:
    change: Change
    scheduled_unix_s: float
    applied_unix_s: float | None = None
    detail: str = ""
    error: str = ""

    @property
    def late_s(self) -> float | None:
        return None if self.applied_unix_s is None else self.applied_unix_s - self.scheduled_unix_s


@dataclass
class PlayerHooks:
    """What the run is told: `leaving(device)` returns once the run no longer needs the device."""

    leaving: Callable[[str], None] = lambda device: None
    joined: Callable[[str], None] = lambda device: None
    applied: Callable[[Applied], None] = lambda applied: None


@dataclass
class ScenarioPlayer:
    changes: list[Change]
    runtime: Runtime
    hooks: PlayerHooks = field(default_factory=PlayerHooks)
    log: list[Applied] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.t0_unix_s: float | None = None

    def start(self, t0_unix_s: float) -> None:
        """Start the clock: change i is due at t0 + changes[i].at_s."""
        self.t0_unix_s = t0_unix_s
        links = [c for c in self.changes if c.kind in ("link", "cpus")]
        actions = [c for c in self.changes if c.kind not in ("link", "cpus")]
        for name, part in (("scenario-links", links), ("scenario-devices", actions)):
            if part:
                t = threading.Thread(target=self._play, args=(part,), name=name, daemon=True)
                self._threads.append(t)
                t.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)

    def __enter__(self) -> ScenarioPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _play(self, changes: list[Change]) -> None:
        """Changes due at the same time are applied together (two directions of one link that
        fades, say), so neither waits for the other."""
        assert self.t0_unix_s is not None
        batches: list[list[Change]] = []
        for c in changes:
            if batches and batches[-1][0].at_s == c.at_s:
                batches[-1].append(c)
            else:
                batches.append([c])
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix=threading.current_thread().name) as pool:
            for batch in batches:
                due = self.t0_unix_s + batch[0].at_s
                while not self._stop.is_set() and (left := due - time.time()) > 0:
                    time.sleep(min(left, 0.05) if left > 0.002 else 0)  # sleep, then spin the last 2 ms
                if self._stop.is_set():
                    return
                list(pool.map(lambda c, due=due: self._apply_logged(c, due), batch))

    def _apply_logged(self, c: Change, due: float) -> None:
        rec = Applied(c, due)
        try:
            rec.detail = self._apply(c)
            rec.applied_unix_s = time.time()
        except Exception as e:  # logged, and the play goes on
            rec.error = f"{type(e).__name__}: {e}"
            log.warning("scenario change at %.3f s (%s) failed: %s", c.at_s, c.kind, rec.error)
        with self._lock:
            self.log.append(rec)
        try:
            self.hooks.applied(rec)
        except Exception:
            log.exception("scenario hook")

    def _apply(self, c: Change) -> str:
        rt = self.runtime
        if c.kind == "link":
            assert c.src is not None and c.dst is not None
            ch = rt.set_link(c.src, c.dst, c.rate_bps, c.delay_s)
            rate = f"{ch.rate_bps / 1e6:g} Mbit/s" if ch.rate_bps else "unshaped"
            return f"{c.src}->{c.dst}: {rate}, {ch.delay_s * 1e3:g} ms ({ch.how})"
        assert c.device is not None
        if c.kind == "cpus":
            assert c.cpus is not None
            held = rt.set_cpus(c.device, c.cpus)
            return f"{c.device}: {held:g} CPUs"
        if c.kind == "leave":
            self.hooks.leaving(c.device)
            rt.leave(c.device)
            return f"{c.device} left"
        if c.kind == "crash":
            rt.kill(c.device)
            return f"{c.device} crashed"
        if c.kind == "join":
            rt.revive(c.device)
            self.hooks.joined(c.device)
            return f"{c.device} joined"
        raise ValueError(f"unknown change {c.kind!r}")
