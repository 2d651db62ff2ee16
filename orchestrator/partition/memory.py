"""How much memory a node running a stage needs: one model for the planner and the profiler.

Measured on ViT-B: an idle node is ~70 MiB RSS; once a stage has run, ONNX Runtime keeps the
weights it read and the pre-packed copies its MatMul kernels build (all of ViT-B, 330 MiB of
weights, peaks at ~714 MiB). Counting weights once lets a plan through that the device's memory
limit then kills.
"""

from __future__ import annotations

NODE_OVERHEAD_BYTES = 96 * 1024**2  # Python, gRPC and ONNX Runtime themselves
WEIGHTS_RESIDENT_FACTOR = 2.25  # resident bytes per weight byte once the stage has run
MEMORY_HEADROOM = 0.10  # share of a device's memory the planner leaves free


def resident_bytes(weights: float, activation: float) -> float:
    """Peak resident memory of a node holding these weights and this largest activation."""
    return NODE_OVERHEAD_BYTES + WEIGHTS_RESIDENT_FACTOR * weights + activation


def usable_bytes(memory: float, headroom: float = MEMORY_HEADROOM) -> float:
    return memory * (1.0 - headroom)


def format_bytes(n: float) -> str:
    """A size for messages: bytes, KiB, MiB or GiB, whichever reads best."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"
