"""Facts about the run's software and host, kept in the report so that a figure can be traced to
what produced it."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil

PACKAGES = ("onnx", "onnxruntime", "grpcio", "numpy", "protobuf", "docker")


def versions() -> dict[str, str | None]:
    """Python, the kernel and the packages the figures depend on (None where not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0], "kernel": platform.release()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """The commit of this code, where it runs from a git checkout."""
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def host_facts() -> dict:
    """The host the devices were emulated on."""
    return {
        "cpus": psutil.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "machine": platform.machine(),
        "system": platform.system(),
    }
