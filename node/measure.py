"""The node's Measure call: one of node/probes.py's probes run beside the node.

`python -m node.probes <probe> <args>` in a child process of the node: in its container and
cgroup (so it measures under the device's own CPU cap and network namespace), as its user, with
its capabilities (tc needs NET_ADMIN). The orchestrator reaches it over the node's gRPC port
alone, so links and CPU caps are checked the same way whether a node runs in a container of
this host's engine or a task on another swarm host.

A probe that runs to its end answers with its last JSON line; one started detached (a sink its
senders connect to) answers at once, and is killed at its timeout if it has not ended by then.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("node.measure")

PROBES = frozenset({"send", "sends", "sink", "busy", "hold", "stage", "meter", "stream", "netem", "quota"})
DEFAULT_TIMEOUT_S = 120.0
MAX_TIMEOUT_S = 3600.0
_ROOT = Path(__file__).resolve().parents[1]  # where `-m node.probes` resolves (the image's /app)
_ERR_TAIL = 2000


class ProbeError(RuntimeError):
    """The probe could not run, failed, or printed no JSON line."""


_detached: list[subprocess.Popen] = []
_lock = threading.Lock()


def _command(probe: str, args: list[str]) -> list[str]:
    if probe not in PROBES:
        raise ProbeError(f"no probe {probe!r} (one of {', '.join(sorted(PROBES))})")
    return [sys.executable, "-m", "node.probes", probe, *args]


def _reap() -> None:
    """Forget detached probes that have ended (their exit status collected: no zombies)."""
    with _lock:
        _detached[:] = [p for p in _detached if p.poll() is None]


def _kill(proc: subprocess.Popen) -> None:
    """The probe and whatever it started (busy's spinning processes): its own process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def _start(probe: str, args: list[str], detach: bool) -> subprocess.Popen:
    out = subprocess.DEVNULL if detach else subprocess.PIPE  # detached: stderr goes to the node's own
    try:
        return subprocess.Popen(
            _command(probe, args),
            cwd=_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=None if detach else subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as e:
        raise ProbeError(f"probe {probe} did not start: {e}") from None


def _kill_at(proc: subprocess.Popen, timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("detached probe %s still running after %g s: killed", proc.args[3], timeout_s)
        _kill(proc)
        proc.wait()
    _reap()


def run(probe: str, args: list[str], detach: bool = False, timeout_s: float = 0.0) -> str:
    """Run `probe` with `args`; its last JSON line ("" when detached). Raises ProbeError."""
    timeout_s = min(timeout_s if timeout_s > 0 else DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S)
    _reap()
    proc = _start(probe, list(args), detach)
    if detach:
        with _lock:
            _detached.append(proc)
        threading.Thread(target=_kill_at, args=(proc, timeout_s), name=f"probe-{probe}", daemon=True).start()
        return ""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        _, err = proc.communicate()
        raise ProbeError(f"probe {probe} did not end within {timeout_s:g} s: {err.strip()[-_ERR_TAIL:]}") from None
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        why = err.strip()[-_ERR_TAIL:] or out.strip()[-_ERR_TAIL:] or "no output"
        raise ProbeError(f"probe {probe} failed (exit {proc.returncode}): {why}")
    return lines[-1]
