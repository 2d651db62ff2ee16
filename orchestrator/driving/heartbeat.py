"""Noticing that a device is gone: the orchestrator asks each watched node's Health every
interval_s, and a node with no answer for dead_after_s is lost, reported once.

gRPC alone notices a dead node late: keepalive cannot go below about 10 s plus its timeout, and
a node whose connection was refused only shows when something next calls it. A crashed device
must be noticed within a second so that the run can re-plan and resend what it held; a node
that is merely slow (a small CPU quota, a busy host) still answers a Health call well within
dead_after_s, so it is never taken for lost.

One thread per watched device: a node that hangs a call does not delay the others' beats."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.driving.client import NodeClient, NodeError

log = logging.getLogger("orchestrator.heartbeat")

MIN_DEADLINE_S = 0.05  # the shortest deadline a Health call gets


@dataclass(frozen=True)
class Lost:
    """A device that stopped answering."""

    device: str
    last_seen_unix_s: float  # its last answer (or when watching it began, if it never answered)
    detected_unix_s: float
    why: str

    @property
    def silent_s(self) -> float:
        return self.detected_unix_s - self.last_seen_unix_s


@dataclass
class _Watch:
    stop: threading.Event
    thread: threading.Thread | None = None
    last_seen_unix_s: float = 0.0
    last_seen_mono: float = 0.0
    answers: int = 0


class Heartbeat:
    """Watches devices' nodes and calls on_lost(Lost) once for each one that falls silent.

    `clients()` gives the current client of every device (it is asked at every beat, so a node
    that came back at a new address is reached there). start() watches every device it names;
    watch(device) starts (again) on one, forget(device) stops watching it (it left, or the plan
    no longer uses it). on_lost runs on the device's heartbeat thread; its exceptions are logged.
    A context manager: entering starts, leaving stops."""

    def __init__(
        self,
        clients: Callable[[], dict[str, NodeClient]],
        on_lost: Callable[[Lost], None],
        interval_s: float = 0.1,
        dead_after_s: float = 0.5,
        dead_after: Callable[[str], float] | None = None,
    ) -> None:
        if interval_s <= 0 or dead_after_s <= interval_s:
            raise ValueError(f"heartbeat: need 0 < interval_s < dead_after_s, got {interval_s} and {dead_after_s}")
        self.clients = clients
        self.on_lost = on_lost
        self.interval_s = interval_s
        self.dead_after_s = dead_after_s
        # per device, where some answer later than others (a small CPU quota); at least dead_after_s
        self.dead_after = dead_after or (lambda device: dead_after_s)
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._lost: dict[str, Lost] = {}

    # -- control -----------------------------------------------------------------------------

    def start(self) -> Heartbeat:
        """Watch every device clients() names (those not watched yet)."""
        for device in self.clients():
            if device not in self._watches:
                self.watch(device)
        return self

    def stop(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for w in watches:
            w.stop.set()
        for w in watches:
            if w.thread is not None and w.thread is not threading.current_thread():
                w.thread.join(timeout=self.dead_after_s + 1.0)

    def watch(self, device: str) -> None:
        """Watch a device from now on (again, after it was lost or forgotten): silence counts
        from now."""
        self.forget(device)
        now_unix, now_mono = time.time(), time.monotonic()
        w = _Watch(threading.Event(), last_seen_unix_s=now_unix, last_seen_mono=now_mono)
        w.thread = threading.Thread(target=self._beat, args=(device, w), name=f"heartbeat-{device}", daemon=True)
        with self._lock:
            self._watches[device] = w
            self._lost.pop(device, None)
        w.thread.start()

    def forget(self, device: str) -> None:
        """Stop watching a device (one that left, or that the plan no longer uses)."""
        with self._lock:
            w = self._watches.pop(device, None)
            self._lost.pop(device, None)
        if w is not None:
            w.stop.set()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def watching(self) -> set[str]:
        with self._lock:
            return set(self._watches)

    @property
    def lost(self) -> dict[str, Lost]:
        """The devices found lost since they were last watched."""
        with self._lock:
            return dict(self._lost)

    def last_seen(self, device: str) -> float | None:
        """When a watched device last answered (unix s); None when it is not watched."""
        with self._lock:
            w = self._watches.get(device)
            return w.last_seen_unix_s if w is not None else None

    # -- the beat ----------------------------------------------------------------------------

    def _beat(self, device: str, w: _Watch) -> None:
        """Ask Health every interval_s, each call with the silence left as its deadline; the
        first time the silence reaches dead_after_s, report the device lost and end."""
        why = "no answer"
        next_at = time.monotonic()
        while not w.stop.is_set():
            client = self.clients().get(device)
            limit = max(self.dead_after_s, self.dead_after(device))
            left = w.last_seen_mono + limit - time.monotonic()
            if client is None:
                why = "no client for it"
            else:
                try:
                    client.health(timeout_s=max(left, MIN_DEADLINE_S))
                except NodeError as e:
                    why = str(e)
                except ValueError as e:  # its channel was closed under us (it was replaced)
                    why = str(e)
                else:
                    w.last_seen_unix_s, w.last_seen_mono = time.time(), time.monotonic()
                    w.answers += 1
            silent = time.monotonic() - w.last_seen_mono
            if silent >= limit:
                self._report(device, w, silent, why)
                return
            next_at = max(next_at + self.interval_s, time.monotonic())
            w.stop.wait(max(next_at - time.monotonic(), 0.0))

    def _report(self, device: str, w: _Watch, silent: float, why: str) -> None:
        lost = Lost(device, w.last_seen_unix_s, time.time(), f"no answer for {silent:.2f} s ({why})")
        with self._lock:
            if w.stop.is_set() or self._watches.get(device) is not w:
                return  # forgotten meanwhile: nothing to report
            self._lost[device] = lost
        log.warning("device %s lost: %s", device, lost.why)
        try:
            self.on_lost(lost)
        except Exception:
            log.exception("heartbeat: on_lost(%s)", device)
