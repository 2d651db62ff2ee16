"""Who uses a Docker testbed: a run holds the testbed it drives, so that no other run tears it down
or loads other stages onto it, and a run that starts a testbed of its own gives it a name and a
subnet no other testbed has.

A hold is an exclusive `flock` on <temp>/edge-testbed/<name>.lock, with the holder's pid, run folder
and start time written in it for whoever finds it taken. The kernel releases a flock when its
process ends, however it ends: a run killed outright leaves no stale hold, and its testbed (labelled
as a run's own) is recognised as orphaned by the next run or `testbed down`.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import IO

from orchestrator.errors import UserError

LOCK_DIR = Path(tempfile.gettempdir()) / "edge-testbed"
RUN_SUBNETS = ipaddress.ip_network("10.213.0.0/16")  # runs' own testbeds take a free /24 of it


class TestbedHeld(UserError):
    """Another run holds the testbed."""


class TestbedHold:
    """An exclusive hold on testbed `name`: `acquire`, then `release` (or the process ends)."""

    def __init__(self, name: str, purpose: str = "") -> None:
        self.name = name
        self.purpose = purpose
        self.path = LOCK_DIR / f"{name}.lock"
        self._file: IO[str] | None = None

    def acquire(self, wait: bool = False, on_wait=None) -> TestbedHold:
        """Take the hold; another holder: raise TestbedHeld naming it, or (wait) block until it goes."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - kept open: the flock lives as long as the file
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            holder = describe_holder(self.name)
            if not wait:
                f.close()
                raise TestbedHeld(
                    f"testbed {self.name!r} is in use by {holder}: run again with --wait to wait for it"
                ) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(f, fcntl.LOCK_EX)  # interrupted by a signal: the exception unwinds, f is closed
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "since_unix_s": time.time(), "purpose": self.purpose}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            self._file.close()  # closing drops the flock
            self._file = None


def is_held(name: str) -> bool:
    """Does any process hold testbed `name` now (this one included)?"""
    path = LOCK_DIR / f"{name}.lock"
    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def describe_holder(name: str) -> str:
    """'run pid 1234 (runs/x, since 12:03:04)' as the holder wrote it, or 'another run'."""
    try:
        info = json.loads((LOCK_DIR / f"{name}.lock").read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another run"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since_unix_s", 0)))
    what = f", {info['purpose']}" if info.get("purpose") else ""
    return f"pid {info['pid']}{what}, since {since}"


def own_testbed_name(base: str) -> str:
    """A name for a run's own testbed: the base, the run's pid and a random suffix."""
    return f"{base}-{os.getpid()}-{secrets.token_hex(2)}"


def free_subnet(client, pool: ipaddress.IPv4Network = RUN_SUBNETS, skip: set[str] | None = None) -> str:
    """A /24 of `pool` that no Docker network on the engine overlaps (nor any in `skip`)."""
    used = []
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                used.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
            except ValueError:
                continue
    taken = {str(s) for s in skip or ()}
    for sub in pool.subnets(new_prefix=24):
        if str(sub) in taken or sub.network_address == pool.network_address:  # .0.0/24: the default testbed
            continue
        if not any(sub.overlaps(u) for u in used if u.version == 4):
            return str(sub)
    raise RuntimeError(f"no free /24 left in {pool} for a run's own testbed: `orchestrator testbed down --all`")
