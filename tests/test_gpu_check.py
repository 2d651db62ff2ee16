"""The GPU check as a user runs it: one line and exit 3 where there is no GPU, clear lines from a
bare python3, and a GPU device's CPU fallback named in a real run's report (local runtime). The
CUDA paths run only where onnxruntime has a CUDA provider and a GPU answers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from orchestrator import config
from orchestrator.config import Device, Gpu
from orchestrator.driving.deploy import LoadedNode
from orchestrator.figures.gpu_use import fallback_notes, gpu_use
from orchestrator.gpu_check import discover
from orchestrator.partition.plan import Plan, StagePlan

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = bool(discover().gpus)
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def gpu_check(*args: str, python: list[str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [*(python or [sys.executable]), "-m", "orchestrator.gpu_check", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def lines(p: subprocess.CompletedProcess) -> list[str]:
    return p.stdout.strip().splitlines()


@pytest.mark.skipif(HAS_GPU, reason="a GPU answers here: the no-GPU line is for machines without one")
def test_no_gpu_is_one_line_and_exit_status_3():
    p = gpu_check()
    assert p.returncode == 3, p.stdout + p.stderr
    assert len(lines(p)) == 1 and lines(p)[0].startswith("gpu-check: no GPU found (NVML: ")
    assert "nvidia-smi: " in p.stdout and "Traceback" not in p.stderr


def test_a_bare_python_says_what_it_could_not_check():
    """`python -S`: no site packages, no numpy, no onnxruntime, no nvidia-ml-py, as on a bare host."""
    p = gpu_check("--continue-without-gpu", python=[sys.executable, "-S"])
    assert "Traceback" not in p.stderr, p.stderr
    out = p.stdout
    assert "nvidia-ml-py is not installed" in out
    assert "NOT CHECKED  stage: needs numpy and onnxruntime: No module named" in out
    assert "NOT CHECKED  local run: the project's packages are not importable" in out
    assert lines(p)[-1].startswith("gpu-check: 0 passed, 0 failed, 2 not checked (stage, local run)")
    assert p.returncode == (0 if HAS_GPU else 3)


def test_bad_usage_is_one_line_and_exit_status_2(tmp_path):
    p = gpu_check("--gpu-memory", "lots")
    assert p.returncode == 2 and p.stderr.startswith("gpu-check: --gpu-memory: ") and len(p.stderr.splitlines()) == 1
    p = gpu_check("--model", str(tmp_path / "none.onnx"))
    assert p.returncode == 2 and "file not found" in p.stderr


@pytest.mark.skipif(HAS_GPU and HAS_CUDA, reason="CUDA runs here: no CPU fallback to name")
def test_the_cpu_fallback_is_named_in_the_run_report(tmp_path):
    """A GPU device on the local runtime whose onnxruntime has no CUDA provider: the node is asked for
    CUDA, runs on the CPU, and the run's report says so (gpu_use, a note, the node's log)."""
    p = gpu_check("--continue-without-gpu", "--out", str(tmp_path / "run"), "--run-seconds", "1", "--seconds", "0.5")
    out = p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    assert "INFO         CPU fallback: CUDA asked, the node's stage runs on CPUExecutionProvider" in out
    assert re.search(r"PASS         local run: \d+ requests through gpu0's node \(.*\), 0 errors;", out), out
    assert "PASS         fallback named: the run's report says: \"device gpu0 has GPU 0 but its node runs" in out
    assert "NOT CHECKED  outputs vs CPU: needs the CUDA provider: " in out
    assert "NOT CHECKED  gpu_mem_limit: needs the CUDA provider: " in out
    assert p.returncode == (0 if HAS_GPU else 3), out
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    use = rep["gpu_use"]["gpu0"]
    assert use == {
        "gpu_index": 0,
        "gpu_memory_limit_bytes": 1024**3,
        "providers": ["CPUExecutionProvider"],
        "on_gpu": False,
        "fallback": "CPUExecutionProvider",
    }
    assert sum("gpu0 has GPU 0" in n for n in rep["notes"]) == 1
    assert rep["agreement"]["max_abs_diff"] == 0.0 and rep["errors"] == 0
    if not HAS_GPU:
        assert rep["gpu_energy"]["gpu0"]["method"].startswith("not measured: NVML unavailable")
    assert "gpu0 has GPU 0 but its node runs" in (tmp_path / "run" / "report.md").read_text()
    log = (tmp_path / "run" / "logs" / "node_gpu0.log").read_text()
    assert "CUDA asked for but this onnxruntime has no CUDA provider" in log  # the local runtime passed --cuda


@pytest.mark.skipif(not (HAS_GPU and HAS_CUDA), reason="needs a GPU and onnxruntime with a CUDA provider")
def test_the_cuda_path_on_a_real_gpu(tmp_path):
    p = gpu_check("--require-cuda", "--out", str(tmp_path / "run"), timeout=600)
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    checks = ("CUDA provider", "NVML power", "outputs vs CPU", "gpu_mem_limit", "node provider", "run's NVML power")
    for check in checks:
        assert f"PASS         {check}: " in out, check
    assert json.loads((tmp_path / "run" / "report.json").read_text())["gpu_use"]["gpu0"]["on_gpu"] is True


def test_gpu_use_names_only_gpu_devices_that_run_a_stage():
    tb = config.Testbed(
        devices=[
            Device(name="a", gpu=Gpu(index=1, memory="512MiB")),
            Device(name="b", gpu=Gpu(index=0)),
            Device(name="c"),
            Device(name="d", gpu=Gpu(index=2)),
        ]
    )
    plan = Plan(
        model="m.onnx",
        model_sha256="",
        algorithm="even",
        objective="throughput",
        inputs=["x"],
        outputs=["y"],
        stages=[
            StagePlan(index=0, device="a", model="s0.onnx", inputs=["x"], outputs=["h"]),
            StagePlan(index=1, device="b", model="s1.onnx", inputs=["h"], outputs=["z"]),
            StagePlan(index=2, device="c", model="s2.onnx", inputs=["z"], outputs=["y"]),
        ],
    )
    nodes = {
        "a": LoadedNode("a", 1, 0.0, "CUDAExecutionProvider,CPUExecutionProvider"),
        "b": LoadedNode("b", 1, 0.0, "CPUExecutionProvider"),
        "c": LoadedNode("c", 1, 0.0, "CPUExecutionProvider"),
        "d": LoadedNode("d", 1, 0.0, "CPUExecutionProvider"),  # a GPU device with no stage: nothing to say
    }
    use = gpu_use(tb, plan, nodes)
    assert set(use) == {"a", "b"}
    assert use["a"]["on_gpu"] and use["a"]["fallback"] is None and use["a"]["gpu_memory_limit_bytes"] == 512 * 1024**2
    assert not use["b"]["on_gpu"] and use["b"]["fallback"] == "CPUExecutionProvider"
    notes = fallback_notes(use)
    assert len(notes) == 1 and notes[0].startswith("device b has GPU 0 but its node runs its stages on CPU")
