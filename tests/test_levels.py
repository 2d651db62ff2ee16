"""Which caps a plan's DVFS levels set, and when (driving/levels.py): a stage's level where it
differs from the cap in force, back to the device's cpus where a later plan holds no stage at a
level on it, and a runtime that cannot set caps failing no run."""

from __future__ import annotations

import pytest

from orchestrator.config import Device, Level, Power
from orchestrator.config import Testbed as Bed
from orchestrator.driving.levels import apply_levels, levels_note, restore_caps
from orchestrator.partition.plan import Plan, StagePlan

BED = Bed(
    devices=[
        Device(name="phone", cpus=0.8, power=Power(idle_w=0.2, max_w=4.0, levels=[Level(cpus=0.4, max_w=1.0)])),
        Device(name="laptop", cpus=1.0, power=Power(idle_w=1.0, max_w=9.0, levels=[Level(cpus=0.5, max_w=3.0)])),
    ]
)


def _plan(*stages: tuple[str, float | None]) -> Plan:
    return Plan(
        model="m.onnx",
        model_sha256="0",
        algorithm="optimal",
        objective="energy",
        inputs=["x"],
        outputs=["y"],
        stages=[
            StagePlan(index=i, device=d, model=f"s{i}.onnx", inputs=[], outputs=[], level=lv)
            for i, (d, lv) in enumerate(stages)
        ],
    )


class Caps:
    """Holds each device's cap as a runtime would, and what it was asked; `refuse` names devices it cannot set."""

    def __init__(self, refuse: tuple[str, ...] = ()):
        self.caps = {d.name: d.cpus for d in BED.devices}
        self.asked: list[tuple[str, float]] = []
        self.refuse = refuse

    def set_cpus(self, device: str, cpus: float) -> float:
        self.asked.append((device, cpus))
        if device in self.refuse:
            raise RuntimeError(f"cannot change {device}'s CPU cap")
        self.caps[device] = cpus
        return cpus


def test_levels_set_where_they_differ_and_moved_back_by_a_later_plan_and_at_the_end():
    rt, in_force = Caps(), {}
    first = apply_levels(rt, _plan(("phone", 0.4), ("laptop", 1.0)), BED, in_force)
    assert rt.asked == [("phone", 0.4)]  # the laptop's level is the cap it has
    assert first["phone"] == {"cpus": 0.4, "read_back": 0.4, "applied": True, "why": ""}
    assert first["laptop"]["applied"] is True and first["laptop"]["read_back"] is None
    assert in_force == {"phone": 0.4} and levels_note(first) is None
    # a re-plan: the phone holds no stage now, the laptop one at its lower level
    second = apply_levels(rt, _plan(("laptop", 0.5)), BED, in_force)
    assert rt.asked[1:] == [("laptop", 0.5), ("phone", 0.8)]
    assert second["phone"]["cpus"] == 0.8 and "back to its own cpus" in second["phone"]["why"]
    assert in_force == {"laptop": 0.5} and rt.caps == {"phone": 0.8, "laptop": 0.5}
    assert restore_caps(rt, BED, in_force) == [] and in_force == {} and rt.caps == {"phone": 0.8, "laptop": 1.0}


def test_a_plan_without_levels_sets_nothing():
    rt = Caps()
    assert apply_levels(rt, _plan(("phone", None), ("laptop", None)), BED, {}) == {} and rt.asked == []


def test_a_runtime_that_cannot_set_a_cap_fails_no_run_and_says_why():
    rt, in_force = Caps(refuse=("phone",)), {}
    got = apply_levels(rt, _plan(("phone", 0.4), ("laptop", 0.5)), BED, in_force)
    assert got["phone"] == {"cpus": 0.4, "read_back": None, "applied": False, "why": "cannot change phone's CPU cap"}
    assert got["laptop"]["applied"] is True and in_force == {"laptop": 0.5}
    note = levels_note(got)
    assert note is not None and note.startswith("DVFS levels not applied: phone at 0.4 CPUs (cannot change phone's")
    assert "laptop" not in note


def test_adaptive_expects_a_stage_at_a_lower_level_to_take_longer():
    from orchestrator.adapt.world import at_levels

    plan = _plan(("phone", 0.4), ("laptop", None))
    steps = at_levels([("phone", 0.010), ("laptop", 0.020)], plan, BED)
    assert steps == [("phone", 0.010 * 0.8 / 0.4), ("laptop", 0.020)]


def test_stages_measured_before_their_levels_are_scaled_to_them():
    """measure_stages runs at the devices' own cpus; a stage at half its device's share takes twice
    as long at its level, and one with no level is left as measured."""
    from orchestrator.config import Device
    from orchestrator.config import Testbed as Bed
    from orchestrator.partition.plan import Plan, StagePlan
    from orchestrator.profiling.calibration import PrefillMeasure, StageMeasure, at_levels, prefill_at_levels

    tb = Bed(devices=[Device(name="a", cpus=0.4), Device(name="b", cpus=0.5)])
    stages = [
        StagePlan(index=0, device="a", model="s0.onnx", inputs=["x"], outputs=["y"], level=0.2),
        StagePlan(index=1, device="b", model="s1.onnx", inputs=["y"], outputs=["z"]),
    ]
    plan = Plan(
        model="m.onnx",
        model_sha256="0",
        algorithm="optimal",
        objective="energy",
        inputs=["x"],
        outputs=["z"],
        stages=stages,
    )
    got = at_levels([StageMeasure(0.1, 0.08, 0.01), StageMeasure(0.3, 0.25, 0.02)], plan, tb)
    assert got[0] == StageMeasure(0.2, 0.16, 0.01) and got[1] == StageMeasure(0.3, 0.25, 0.02)
    # a generation job's prefill, measured at the devices' cpus, is scaled alike
    pre = PrefillMeasure(tokens=8, compute_s=[0.1, 0.2], wall_s=[0.15, 0.2], bytes_in=[64, 512], extra_transfer_s=0.0)
    scaled = prefill_at_levels(pre, plan, tb)
    assert scaled.compute_s == pytest.approx([0.2, 0.2]) and scaled.wall_s == pytest.approx([0.3, 0.2])
