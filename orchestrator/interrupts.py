"""Stopping a command cleanly on SIGINT or SIGTERM, whatever it is doing.

The first signal stops the run where it is: during the measured drive it ends the drive (what was
measured is reported, with `complete: false`); in any other phase it raises `Interrupted` in the
main thread, which unwinds through the runtimes' context managers, so every container, network,
process and collector the run started is stopped on the way out. Signals after the first are said
and otherwise ignored: a second Ctrl-C must not cut the clean-up short. The exit status is 128 + the
signal's number (130 for SIGINT, 143 for SIGTERM).

`phase(name)` marks where a run is, for the report of an interrupted run. Setting
ORCHESTRATOR_PAUSE_AT to a phase's name makes the run wait at the start of that phase until a signal
comes: the way to see what an interrupt at that phase leaves behind.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

PAUSE_ENV = "ORCHESTRATOR_PAUSE_AT"
SOFT_STOP_S = 5.0  # a drive asked to end has this long to return
PHASES = (
    "starting",
    "partitioning",
    "measuring stages",
    "deploying",
    "checking fidelity",
    "driving",
    "writing the report",
)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `exit_status` is what the command exits with."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal, once one came
        self.installed = False
        self.phase = "starting"
        self.soft: Callable[[str], None] | None = None  # ends the drive in progress
        self.shielded = 0  # > 0: a signal is recorded, not raised
        self.escalate = False  # the next handler call raises (a soft stop did not stop)


_state = _State()


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (the command line does, once)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _state.installed = True


def _on_signal(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    if _state.escalate:  # a soft stop that did not stop: unwind after all
        _state.escalate = False
        raise Interrupted(_state.signum or signum)
    if _state.signum is not None:
        print(f"{name}: still stopping; everything the run started is being removed", file=sys.stderr, flush=True)
        return
    _state.signum = signum
    print(f"{name}: stopping the run ({_state.phase})", file=sys.stderr, flush=True)
    if _state.soft is not None:  # from a thread: the handler may run while the main thread holds a lock
        threading.Thread(target=_end_softly, args=(_state.soft, f"interrupted by {name}"), daemon=True).start()
        return
    if _state.shielded:
        return
    raise Interrupted(signum)


def ignore_further() -> None:
    """The command is ending after a signal: later ones are ignored to the end (the interpreter's
    exit puts back the default action, which would kill it with the clean-up done)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _end_softly(end: Callable[[str], None], why: str) -> None:
    """End the drive; one that has not returned within SOFT_STOP_S is unwound in the main thread."""
    end(why)
    deadline = time.monotonic() + SOFT_STOP_S
    while _state.soft is end and time.monotonic() < deadline:
        time.sleep(0.05)
    if _state.soft is end:
        _state.escalate = True
        _thread.interrupt_main(signal.SIGINT)


def stopped() -> Interrupted | None:
    """The interruption, if a signal came."""
    return None if _state.signum is None else Interrupted(_state.signum)


def current_phase() -> str:
    return _state.phase


def phase(name: str) -> None:
    """The run enters phase `name`; raises if a signal came meanwhile, pauses where asked."""
    _state.phase = name
    if (stop := stopped()) is not None and not _state.shielded:
        raise stop
    if os.environ.get(PAUSE_ENV) == name:
        print(f"paused at {name!r} ({PAUSE_ENV}): waiting for a signal", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 600.0
        while time.monotonic() < deadline and stopped() is None:
            time.sleep(0.05)  # unshielded, the handler raises in here


@contextlib.contextmanager
def soft_stop(end: Callable[[str], None]) -> Iterator[None]:
    """While inside, the first signal calls `end(why)` (from a thread) instead of raising."""
    _state.soft = end
    try:
        if (stop := stopped()) is not None:
            end(f"interrupted by {signal.Signals(stop.signum).name}")
        yield
    finally:
        _state.soft = None


@contextlib.contextmanager
def shield() -> Iterator[None]:
    """While inside, a signal is recorded and not raised: what is being written gets written."""
    _state.shielded += 1
    try:
        yield
    finally:
        _state.shielded -= 1
