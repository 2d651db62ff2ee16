"""DVFS levels put in force: each device holding a stage runs at the CPU share its plan chose
(plan.json's stage `level`), set through the runtime's `set_cpus` (docker: a live update of the
container's CPU quota, read back, the node resizing its threads to it). A runtime that cannot
change a cap while its nodes run says why; the run goes on with the devices at their own cpus and
the report says so (`levels_note`), never silently.

Applied after the stages are loaded and the emulation checked (the check measures the caps the
devices file sets), before the measured requests; a re-plan applies its own plan's levels and puts
a device an earlier plan lowered, and that now holds no stage at a level, back to its cpus; once the
run is measured every device goes back to its cpus (`restore_caps`)."""

from __future__ import annotations

from orchestrator.config import Testbed
from orchestrator.partition.plan import Plan
from orchestrator.runtimes.base import Runtime

_SAME = 1e-9


def _wanted(plan: Plan, testbed: Testbed, in_force: dict[str, float]) -> dict[str, tuple[float, str]]:
    """device -> (the CPU share it should run at, why) for every device whose stage has a level, and
    every device `in_force` holds off its cpus that now has no stage at a level."""
    members = {d.name for d in testbed.devices}
    out: dict[str, tuple[float, str]] = {}
    for s in plan.stages:
        if s.level is not None and s.device in members:
            out[s.device] = (float(s.level), "")
    for dev in in_force:
        if dev in members and dev not in out:
            out[dev] = (testbed.device(dev).cpus, "back to its own cpus: it holds no stage at a level now")
    return out


def apply_levels(
    rt: Runtime, plan: Plan, testbed: Testbed, in_force: dict[str, float] | None = None
) -> dict[str, dict]:
    """Set every device to the level its stage has in `plan`, where that differs from the cap it
    runs at: `in_force` (the caps an earlier call set, updated here) or else the testbed's cpus.

    Returns device -> {"cpus": the level, "read_back": the cap the runtime read back (None where
    nothing was set), "applied": whether the device runs at the level, "why": why not, or why
    nothing was set}. A runtime that cannot set a cap fails no run: its reason is the entry's why."""
    in_force = {} if in_force is None else in_force
    out: dict[str, dict] = {}
    for dev, (cpus, why) in _wanted(plan, testbed, in_force).items():
        own = testbed.device(dev).cpus
        now = in_force.get(dev, own)
        if abs(now - cpus) <= _SAME:
            out[dev] = {"cpus": cpus, "read_back": None, "applied": True, "why": why or "the cap it runs at already"}
            continue
        try:
            held = rt.set_cpus(dev, cpus)
        except Exception as e:  # a runtime that cannot: the run goes on at the cap in force, and says so
            out[dev] = {"cpus": cpus, "read_back": None, "applied": False, "why": _reason(e)}
            continue
        if abs(cpus - own) <= _SAME:
            in_force.pop(dev, None)
        else:
            in_force[dev] = cpus
        out[dev] = {"cpus": cpus, "read_back": round(float(held), 6), "applied": True, "why": why}
    return out


def restore_caps(rt: Runtime, testbed: Testbed, in_force: dict[str, float]) -> list[str]:
    """Once the run is measured: every device a level moved goes back to its cpus (a testbed that
    outlives the run is left as the devices file has it). Returns a note per device that could not."""
    notes = []
    for dev in list(in_force):
        try:
            rt.set_cpus(dev, testbed.device(dev).cpus)
            in_force.pop(dev)
        except Exception as e:  # a node gone by now: said, and the run's figures stand
            notes.append(f"{dev}: its CPU cap was left at its level {in_force[dev]:g} after the run: {_reason(e)}")
    return notes


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, RuntimeError) and str(e) else f"{type(e).__name__}: {e}"


def levels_note(levels: dict[str, dict]) -> str | None:
    """One line for the report's notes where a level was not put in force (None where all were)."""
    failed = {d: e for d, e in levels.items() if not e["applied"]}
    if not failed:
        return None
    whys: dict[str, list[str]] = {}
    for d, e in failed.items():
        whys.setdefault(e["why"], []).append(f"{d} at {e['cpus']:g} CPUs")
    said = "; ".join(f"{', '.join(devs)} ({why})" for why, devs in whys.items())
    return (
        f"DVFS levels not applied: {said}. Those devices ran at the cap they had (their own cpus), "
        "and the measured energy weighs their CPU time at that cap's power"
    )


def levels_text(levels: dict[str, dict]) -> str:
    """The levels put in force, in a few words for the console ("phone 0.2 CPUs (read back 0.2)")."""
    parts = []
    for d, e in levels.items():
        if not e["applied"]:
            parts.append(f"{d} {e['cpus']:g} CPUs not applied")
        elif e["read_back"] is None:
            parts.append(f"{d} {e['cpus']:g} CPUs (already)")
        else:
            parts.append(f"{d} {e['cpus']:g} CPUs (read back {e['read_back']:g})")
    return ", ".join(parts)
