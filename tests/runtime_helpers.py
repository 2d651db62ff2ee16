"""Shared by the runtime tests (local and Docker): a two-stage plan loaded on a runtime's nodes, a
few requests driven through it, and the holds a node reports for one incoming link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from orchestrator.config import Testbed
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import Feed, Record, drive
from orchestrator.partition import partition
from orchestrator.partition.plan import Plan
from orchestrator.runtimes.base import Runtime


def load_two_stages(rt: Runtime, model: Path, testbed: Testbed, source: str, out_dir: Path) -> Plan:
    """Partition `model` into two stages over the testbed's devices and load them on the nodes."""
    plan = partition(model, testbed, algorithm="even", stages=2, source=source, out_dir=out_dir)
    deploy(rt.node_plan(plan, out_dir), testbed, rt.running, source)
    return plan


def drive_some(rt: Runtime, source: str, n: int = 4) -> list[Record]:
    """`n` requests of the tiny ViT (pixel_values 1x3x32x32) through the loaded pipeline, one at a time."""
    rng = np.random.default_rng(0)
    feeds = (Feed({"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}, k) for k in range(n))
    records = drive(rt.running.client(source), feeds, total=n, concurrency=1, timeout_s=60)
    assert all(not r.error and r.done_ns for r in records), [r.error for r in records]
    return records


def held(rt: Runtime, device: str, upstream: str) -> tuple[int, float, float]:
    """Frames `device`'s node has held from `upstream`, and the sums asked and applied (s)."""
    stats = rt.running.client(device).stats()
    h = next((h for h in stats.holds if h.device == upstream), None)
    return (h.frames, h.asked_ns / 1e9, h.held_ns / 1e9) if h else (0, 0.0, 0.0)


def mean_hold_s(before: tuple[int, float, float], after: tuple[int, float, float]) -> tuple[int, float, float]:
    """Frames held between two readings of `held`, and their mean hold asked and applied (s)."""
    n = after[0] - before[0]
    return n, (after[1] - before[1]) / max(n, 1), (after[2] - before[2]) / max(n, 1)


TINY_VIT = Path(__file__).resolve().parent / "fixtures" / "hf_vit_tiny.onnx"


def write_tiny_job(folder: Path, devices: list[dict], **job: object) -> Path:
    """folder/devices.yaml with `devices`, and folder/job.yaml: the tiny ViT fixture in two stages
    from the first device, synthetic inputs; `job` overrides any key. The job file's path."""
    (folder / "devices.yaml").write_text(yaml.safe_dump({"devices": devices}))
    doc = {
        "name": "tiny",
        "model": str(TINY_VIT),
        "devices": "devices.yaml",
        "algorithm": "even",
        "stages": 2,
        "source": devices[0]["name"],
        "requests": 20,
        "warmup": 2,
        "concurrency": 2,
        "dataset": {"kind": "synthetic", "seed": 0},
        **job,
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(doc))
    return folder / "job.yaml"
