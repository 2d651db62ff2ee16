"""Room in the host's neighbour (ARP) table for a testbed's devices.

The kernel keeps one ARP table for all the network namespaces of a host (`arp_cache`), bounded
by net.ipv4.neigh.default.gc_thresh1/2/3 (128, 512 and 1024 by default). Every device of a
testbed talks to every other, so n devices hold about n*(n-1) entries in their namespaces, and
the host one more per device. Past gc_thresh3 the kernel refuses new entries ("neighbor table
overflow" in its log) and drops packets to a peer it holds none for; past gc_thresh2 it evicts
entries in use. Measured on a 32-device fleet with the defaults: from the eleventh round of the
fidelity check on, half of its transfers stalled for seconds and timed out.

`ensure_room` raises the limits where a testbed needs more (never lowers them) and says so: a
change to the host, reported, not made silently. Where they cannot be written it refuses in one
line with the command that would make the room.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from orchestrator.errors import UserError

NEIGH_DIR = Path("/proc/sys/net/ipv4/neigh/default")
THRESHOLDS = ("gc_thresh1", "gc_thresh2", "gc_thresh3")


def entries_needed(devices: int) -> int:
    """ARP entries a testbed of `devices` holds on its host: each device's peers, and the host's."""
    return devices * devices


def entries_now() -> int:
    """Entries the host's ARP table holds now, in every namespace (`ip -s ntable`), 0 where unread."""
    try:
        out = subprocess.run(
            ["ip", "-s", "ntable", "show", "name", "arp_cache"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    m = re.search(r"\bentries (\d+)", out)
    return int(m.group(1)) if m else 0


def limits(neigh_dir: Path = NEIGH_DIR) -> dict[str, int]:
    return {k: int((neigh_dir / k).read_text()) for k in THRESHOLDS}


def wanted(current: dict[str, int], need: int) -> dict[str, int]:
    """The limits that hold `need` entries with room to spare: no eviction below gc_thresh2, no
    refusal below gc_thresh3 (twice the need). Each at least what it was."""
    return {
        "gc_thresh1": current["gc_thresh1"],
        "gc_thresh2": max(current["gc_thresh2"], need),
        "gc_thresh3": max(current["gc_thresh3"], 2 * need, current["gc_thresh2"] + 1, need + 1),
    }


def ensure_room(devices: int, neigh_dir: Path = NEIGH_DIR, in_use: int | None = None) -> str | None:
    """Make room in the host's ARP table for a testbed of `devices` beside the entries in use.
    Returns a line saying what was raised, or None where the limits already hold it. Raises
    UserError where they do not and cannot be written (not root, a read-only /proc/sys)."""
    if not neigh_dir.is_dir():
        return None  # not Linux, or no IPv4 neighbour settings to read: nothing to check
    need = entries_needed(devices) + (entries_now() if in_use is None else in_use)
    current = limits(neigh_dir)
    new = wanted(current, need)
    if new == current:
        return None
    try:
        for k in ("gc_thresh3", "gc_thresh2", "gc_thresh1"):  # the hard limit first: thresh2 <= thresh3 always
            if new[k] != current[k]:
                (neigh_dir / k).write_text(f"{new[k]}\n")
    except OSError as e:
        cmd = " ".join(f"net.ipv4.neigh.default.{k}={v}" for k, v in new.items() if v != current[k])
        raise UserError(
            f"{devices} devices need about {need} entries in the host's ARP table, which holds at most "
            f"{current['gc_thresh3']} (and evicts past {current['gc_thresh2']}); it could not be raised "
            f"({e.strerror or e}): run `sysctl -w {cmd}` as root",
            str(neigh_dir),
        ) from None
    raised = ", ".join(f"{k} {current[k]} -> {new[k]}" for k in THRESHOLDS if new[k] != current[k])
    return f"raised the host's ARP table limits for {devices} devices ({need} entries): {raised}"
