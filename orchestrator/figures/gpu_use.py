"""Where each GPU device's stages really ran: the execution providers its node reported on load.

A device given a GPU in devices.yaml whose node runs on the CPU (its onnxruntime has no CUDA
provider, or the provider did not start) would otherwise pass for a GPU run; the report names it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.config import Testbed
    from orchestrator.driving.deploy import LoadedNode
    from orchestrator.partition.plan import Plan

CUDA = "CUDAExecutionProvider"


def gpu_use(testbed: Testbed, plan: Plan, nodes: dict[str, LoadedNode]) -> dict[str, dict]:
    """Per device with a GPU that runs a stage: its GPU, the providers its node runs them on, and
    the provider it fell back to where CUDA is not among them."""
    running = {s.device for s in plan.stages}
    out: dict[str, dict] = {}
    for dev in testbed.devices:
        if dev.gpu is None or dev.name not in running or dev.name not in nodes:
            continue
        providers = [p for p in nodes[dev.name].providers.split(",") if p]
        on_gpu = CUDA in providers
        out[dev.name] = {
            "gpu_index": dev.gpu.index,
            "gpu_memory_limit_bytes": dev.gpu.memory,
            "providers": providers,
            "on_gpu": on_gpu,
            "fallback": None if on_gpu else (providers[0] if providers else "CPUExecutionProvider"),
        }
    return out


def fallback_notes(use: dict[str, dict]) -> list[str]:
    """One line per GPU device whose node runs its stages without its GPU."""
    return [
        f"device {name} has GPU {u['gpu_index']} but its node runs its stages on {u['fallback']} (CPU fallback): "
        "its onnxruntime has no usable CUDA provider (onnxruntime-gpu not installed, or the CUDA/cuDNN "
        "libraries not found; the node's log says which); its figures are the CPU's, not the GPU's"
        for name, u in use.items()
        if not u["on_gpu"]
    ]
