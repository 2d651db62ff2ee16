"""One pipeline stage: an ONNX Runtime session for a stage model, threaded for the node's CPU cap."""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from common.ort_session import CPU_ONLY, Provider, SessionSettings, open_session
from node import kv_cache, resources

log = logging.getLogger("node.stage")


@dataclass
class StageConfig:
    """What the node needs to run and forward one stage (mirrors testbed.StageSpec)."""

    index: int
    model_path: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    next_device: str = ""
    memory_mode: str = "default"  # "lean": no pre-packed weights (less resident memory, slower)
    state: dict[str, str] = field(default_factory=dict)  # cache input -> the output that feeds it next step


MALLOC_ARENAS = 2  # glibc malloc arenas a node uses (its default: 8 per core, one per busy thread)
_M_ARENA_MAX = -8  # mallopt's M_ARENA_MAX


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for the threads still to come; True where it could.

    Each gRPC thread that handles a frame otherwise gets an arena of its own, and memory freed in
    one is never reused by another: which threads happened to serve decides several MiB of a node's
    resident memory, run to run. Two arenas keep it what the stage needs (partition.memory)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def release_free_memory() -> bool:
    """Give the memory freed so far back to the system (glibc's malloc_trim); True where it could.

    The runtimes raise glibc's trim threshold (fast large frames), so the weights and arena of a
    stage session just closed would otherwise stay resident for good: a node that held profiling
    chunks or an earlier plan would report, and be limited on, memory that no stage of its own uses."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def cuda_options(env: dict[str, str] | None = None) -> dict[str, str]:
    """CUDA provider options: the device's GPU memory cap, set by the runtime in the environment."""
    env = os.environ if env is None else env
    opts = {"device_id": "0"}  # the container sees only its assigned GPU
    limit = env.get("ORT_CUDA_GPU_MEM_LIMIT")
    if limit:
        opts["gpu_mem_limit"] = str(int(limit))
        opts["arena_extend_strategy"] = "kSameAsRequested"
    return opts


class Stage:
    """ORT session for one stage model; external data is resolved next to the model file.

    threads=0 takes the quota's share of threads (`ort_threads`); spinning follows
    `SessionSettings.for_share`."""

    def __init__(
        self,
        config: StageConfig,
        threads: int = 0,
        limits: resources.Limits | None = None,
        use_cuda: bool = False,
    ) -> None:
        self.config = config
        lim = limits or resources.limits()
        self.cpu_quota = lim.cpu_quota
        providers: tuple[Provider, ...] = CPU_ONLY
        if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = (("CUDAExecutionProvider", cuda_options()), "CPUExecutionProvider")
        elif use_cuda:
            log.warning("stage %d: CUDA asked for but this onnxruntime has no CUDA provider: CPU used", config.index)
        self._providers = providers
        self.prepacking = config.memory_mode != "lean"
        settings = SessionSettings.for_share(threads, lim.cpu_quota, lim.cores, providers, self.prepacking)
        self.threads, self.spinning = settings.threads, settings.spinning
        self.session = open_session(config.model_path, settings)
        self.providers: list[str] = list(self.session.get_providers())
        if providers is not CPU_ONLY and "CUDAExecutionProvider" not in self.providers:
            log.warning("stage %d: the CUDA provider did not start (CUDA or cuDNN missing?): CPU used", config.index)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.declared = {i.name: (list(i.shape), i.type) for i in self.session.get_inputs()}
        declared = [o.name for o in self.session.get_outputs()]
        self.output_names = list(config.outputs) or declared
        missing = [n for n in self.output_names if n not in declared]
        missing += [n for n in config.state.values() if n not in declared]
        missing_in = [n for n in config.state if n not in self.input_names]
        if missing_in:
            raise ValueError(f"stage {config.index}: {config.model_path} has no cache input(s) {missing_in}")
        if missing:
            raise ValueError(f"stage {config.index}: {config.model_path} has no output(s) {missing}")
        log.info(
            "stage %d %s: threads=%d quota=%s spinning=%s memory=%s providers=%s",
            config.index,
            config.model_path,
            self.threads,
            "none" if self.cpu_quota is None else f"{self.cpu_quota:g}",
            "on" if self.spinning else "off",
            "default" if self.prepacking else "lean (no pre-packed weights)",
            ",".join(self.providers),
        )

    def reopen(self, threads: int, limits: resources.Limits) -> None:
        """Open the session again with `threads` under `limits` (its CPU cap changed while it runs):
        the old one is released first, so a memory-tight device never holds both."""
        settings = SessionSettings.for_share(threads, limits.cpu_quota, limits.cores, self._providers, self.prepacking)
        old = SessionSettings(
            threads=self.threads, spinning=self.spinning, prepacking=self.prepacking, providers=self._providers
        )
        del self.session
        try:
            self.session = open_session(self.config.model_path, settings)
        except Exception:
            self.session = open_session(self.config.model_path, old)  # keep running as before
            raise
        self.threads, self.spinning, self.cpu_quota = settings.threads, settings.spinning, limits.cpu_quota
        log.info(
            "stage %d reopened: threads=%d quota=%s spinning=%s",
            self.config.index,
            self.threads,
            "none" if self.cpu_quota is None else f"{self.cpu_quota:g}",
            "on" if self.spinning else "off",
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on the feeds the model declares (extra feeds are ignored); returns its outputs and,
        for a stage that keeps a cache, the cache outputs besides."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"stage {self.config.index}: missing input(s) {missing}")
        names = self.output_names + [n for n in self.config.state.values() if n not in self.output_names]
        outs = self.session.run(names, {n: feeds[n] for n in self.input_names})
        return dict(zip(names, outs, strict=True))

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-token caches for a sequence's prefill."""
        out = {}
        for name in self.config.state:
            shape, type_name = self.declared[name]
            out[name] = kv_cache.empty_cache(shape, batch, _NP_TYPES.get(type_name, np.float32))
        return out


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
