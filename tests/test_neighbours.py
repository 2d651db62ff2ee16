"""Room in the host's ARP table: limits raised to what a testbed needs, never lowered, refused in
one line where they cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import UserError
from orchestrator.runtimes.neighbours import NEIGH_DIR, THRESHOLDS, ensure_room, entries_needed, entries_now, limits


def _dir(tmp_path: Path, t1: int = 128, t2: int = 512, t3: int = 1024) -> Path:
    for k, v in zip(THRESHOLDS, (t1, t2, t3), strict=True):
        (tmp_path / k).write_text(f"{v}\n")
    return tmp_path


def test_a_fleet_of_32_gets_room_the_defaults_lack(tmp_path):
    d = _dir(tmp_path)
    said = ensure_room(32, d, in_use=40)
    need = entries_needed(32) + 40
    assert need == 1064
    got = limits(d)
    assert got == {"gc_thresh1": 128, "gc_thresh2": need, "gc_thresh3": 2 * need}
    assert said is not None and "gc_thresh2 512 -> 1064" in said and "gc_thresh3 1024 -> 2128" in said


def test_a_small_testbed_changes_nothing(tmp_path):
    d = _dir(tmp_path)
    assert ensure_room(4, d, in_use=10) is None
    assert limits(d) == {"gc_thresh1": 128, "gc_thresh2": 512, "gc_thresh3": 1024}


def test_limits_are_never_lowered(tmp_path):
    d = _dir(tmp_path, 4096, 8192, 16384)
    assert ensure_room(32, d, in_use=0) is None
    assert limits(d)["gc_thresh3"] == 16384


READ_ONLY = Path("/proc/sys/kernel/cap_last_cap")  # a sysctl of mode 0444: not even root writes it


@pytest.mark.skipif(not READ_ONLY.exists(), reason=f"no {READ_ONLY} to stand in for an unwritable limit")
def test_unwritable_limits_are_one_line_naming_the_sysctl(tmp_path):
    d = _dir(tmp_path)
    (d / "gc_thresh2").unlink()
    (d / "gc_thresh2").symlink_to(READ_ONLY)
    with pytest.raises(UserError) as e:
        ensure_room(32, d, in_use=0)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg
    assert "sysctl -w net.ipv4.neigh.default.gc_thresh2=1024 net.ipv4.neigh.default.gc_thresh3=2048" in msg


@pytest.mark.skipif(not NEIGH_DIR.is_dir(), reason="no /proc/sys/net/ipv4/neigh on this host")
def test_the_host_table_is_read():
    assert entries_now() >= 0 and set(limits()) == set(THRESHOLDS)
