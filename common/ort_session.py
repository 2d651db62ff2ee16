"""The one way to open an ONNX Runtime session: the node's stages and the orchestrator's own runs.

Threads and spinning are set on purpose, never left to ONNX Runtime: it sizes its pool from the
host's cores and ignores a CPU quota, and a spinning pool burns the quota the compute needs.
Memory can be traded for time: without pre-packing (the lean memory mode) ONNX Runtime computes on
the mapped weights file instead of its own packed copies: a ViT-B stage holds about its weights less
resident memory (they stay in the page cache) and computes about a tenth slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from common.cpu_quota import ort_threads

Provider = str | tuple[str, dict[str, str]]  # a name, or a name with its options
CPU_ONLY: tuple[Provider, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class SessionSettings:
    """How a session runs: intra-op threads (0: ONNX Runtime's choice, one per core), spinning,
    memory mode (pre-packed weights, the CPU arena) and execution providers in order of preference."""

    threads: int = 0
    spinning: bool = True
    prepacking: bool = True
    cpu_arena: bool = True
    providers: tuple[Provider, ...] = CPU_ONLY

    @classmethod
    def for_share(
        cls,
        threads: int,
        cpu_quota: float | None,
        cores: int,
        providers: tuple[Provider, ...] = CPU_ONLY,
        prepacking: bool = True,
    ) -> SessionSettings:
        """Settings for a process under `cpu_quota` (None: no quota) on `cores` usable cores.

        threads=0 takes `ort_threads` of the quota. Spinning is off under a quota, and when explicit
        threads are fewer than the cores: a spinning pool burns the quota that the compute needs, and
        with other processes beside it steals their cores. `prepacking` False is the lean memory mode."""
        explicit = threads > 0
        count = threads if explicit else ort_threads(cpu_quota, cores)
        spinning = not (cpu_quota is not None or (explicit and cores > count))
        return cls(threads=count, spinning=spinning, prepacking=prepacking, providers=providers)


def session_options(settings: SessionSettings) -> ort.SessionOptions:
    """ONNX Runtime's options for `settings`: one stage runs its operators in order, on its own threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not settings.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not settings.prepacking:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.enable_cpu_mem_arena = settings.cpu_arena
    return so


def open_session(model: str | Path | bytes, settings: SessionSettings | None = None) -> ort.InferenceSession:
    """A session for the model file (external data resolved next to it), or for a serialized
    model, under `settings`."""
    settings = settings or SessionSettings()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(settings), providers=list(settings.providers))
