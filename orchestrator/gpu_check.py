"""`python3 -m orchestrator.gpu_check` (`make gpu-check`): what this machine proves of the GPU path.

A GPU host lent for a check may have only python3, numpy, onnxruntime and nvidia-ml-py, so each
part needs no more than what it checks, and a part that cannot run says why in one line:

- discovery (the standard library, nvidia-ml-py, nvidia-smi): the GPUs, the driver, CUDA;
- the node's own stage in this process (numpy, onnxruntime): the provider it runs on, NVML power
  sampled while it runs; with a CUDA provider, outputs against the CPU's and `gpu_mem_limit`;
- a real run of one GPU device on the local runtime (the project's packages): the providers its
  node reports, the CPU fallback named in the run's report, NVML power and the node's GPU memory
  while requests flow, outputs against the whole model on the CPU.

Exit status: 0 every check that ran passed, 1 one failed, 2 bad usage, 3 no GPU here (one line),
4 with --require-cuda when the CUDA provider could not be checked.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.units import parse_size

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "tests" / "fixtures" / "hf_vit_tiny.onnx"
CUDA = "CUDAExecutionProvider"
TOLERANCE = 1e-3  # largest absolute difference allowed between CUDA's outputs and the CPU's
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU, EXIT_NO_CUDA = 0, 1, 2, 3, 4
MiB = 1024 * 1024


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int | None = None
    power_limit_w: float | None = None


@dataclass
class Discovery:
    """GPUs as NVML and nvidia-smi see them, and why either saw none."""

    nvml: list[Gpu] = field(default_factory=list)
    nvml_error: str | None = None
    driver: str | None = None
    cuda: str | None = None
    smi: list[Gpu] = field(default_factory=list)
    smi_error: str | None = None

    @property
    def gpus(self) -> list[Gpu]:
        return self.nvml or self.smi


@dataclass
class Checks:
    """Verdicts, printed as they come: pass, fail, not checked (and why), or info."""

    out: Any = field(default_factory=lambda: sys.stdout)
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, verdict: str, name: str, detail: str) -> None:
        self.rows.append((verdict, name, detail))
        print(f"{verdict.upper():<12} {name}: {detail}", file=self.out, flush=True)

    def count(self, verdict: str) -> list[str]:
        return [name for v, name, _ in self.rows if v == verdict]


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # a figure this GPU or driver does not give (MIG, a board without power readings)
        return None


def discover_nvml(d: Discovery) -> None:
    try:
        import pynvml
    except ImportError as e:
        d.nvml_error = f"nvidia-ml-py is not installed ({e})"
        return
    try:
        pynvml.nvmlInit()
    except Exception as e:  # no driver, no library
        d.nvml_error = str(e) or type(e).__name__
        return
    try:
        d.driver = _try(lambda: _text(pynvml.nvmlSystemGetDriverVersion()))
        cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion)
        d.cuda = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            limit = _try(pynvml.nvmlDeviceGetPowerManagementLimit, h)
            mem = _try(pynvml.nvmlDeviceGetMemoryInfo, h)
            d.nvml.append(
                Gpu(i, _text(pynvml.nvmlDeviceGetName(h)), mem.total if mem else None, limit / 1000 if limit else None)
            )
    except Exception as e:
        d.nvml_error = f"NVML answered, then failed: {e}"
    finally:
        _try(pynvml.nvmlShutdown)


def discover_smi(d: Discovery, timeout_s: float = 20.0) -> None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        d.smi_error = "not installed"
        return
    query = ["--query-gpu=index,name,memory.total,power.limit", "--format=csv,noheader,nounits"]
    try:
        p = subprocess.run([exe, *query], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        d.smi_error = f"did not answer: {e}"
        return
    if p.returncode != 0:
        d.smi_error = ((p.stdout + p.stderr).strip().splitlines() or [f"exit status {p.returncode}"])[0]
        return
    for line in p.stdout.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) == 4 and cols[0].isdigit():
            mem = _try(float, cols[2])
            d.smi.append(Gpu(int(cols[0]), cols[1], int(mem * MiB) if mem else None, _try(float, cols[3])))


def discover() -> Discovery:
    d = Discovery()
    discover_nvml(d)
    discover_smi(d)
    return d


def describe(g: Gpu) -> str:
    mem = f", {g.memory_bytes / 1024**3:.1f} GiB" if g.memory_bytes else ""
    power = f", power limit {g.power_limit_w:.0f} W" if g.power_limit_w else ""
    return f"#{g.index} {g.name}{mem}{power}"


def report_discovery(d: Discovery, checks: Checks) -> None:
    if d.nvml:
        facts = ", ".join(x for x in (d.driver and f"driver {d.driver}", d.cuda and f"CUDA {d.cuda}") if x)
        checks.add("pass", "NVML", f"{len(d.nvml)} GPU(s): " + "; ".join(map(describe, d.nvml)) + f" ({facts})")
    else:
        checks.add("not checked" if d.smi else "info", "NVML", f"unavailable: {d.nvml_error}")
    if d.smi:
        checks.add("pass", "nvidia-smi", f"{len(d.smi)} GPU(s): " + "; ".join(map(describe, d.smi)))
    else:
        checks.add("info", "nvidia-smi", d.smi_error or "no GPU listed")
    if d.nvml and d.smi and {g.index for g in d.nvml} != {g.index for g in d.smi}:
        checks.add("fail", "discovery", "NVML and nvidia-smi list different GPUs")


class NvmlProcessMemory:
    """Peak GPU memory NVML gives for the processes `wanted` picks on one GPU, sampled in a thread."""

    def __init__(self, index: int, wanted: Any, period_s: float = 0.1):
        self.index, self.wanted, self.period_s = index, wanted, period_s
        self.peak: dict[int, int] = {}
        self.error: str | None = None
        self._nvml: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-processes", daemon=True)

    def __enter__(self) -> NvmlProcessMemory:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self._nvml = pynvml
        except Exception as e:
            self.error = f"NVML unavailable: {e}"
            return self
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception as e:
            self.error = f"NVML gave no process list: {e}"
            return
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            if used is not None and self.wanted(p.pid):
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), int(used))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._nvml is not None:
            _try(self._nvml.nvmlShutdown)


def is_node_of(device: str) -> Any:
    """A pid predicate: the process is the node of `device` (python -m node --device DEVICE)."""

    def wanted(pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"node" in argv and device.encode() in argv and b"--device" in argv

    return wanted


def sample_feeds(session: Any, seed: int = 0) -> dict[str, Any]:
    """Seeded random inputs of the model's declared shapes (a symbolic dimension taken as 1)."""
    import numpy as np

    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        if i.type not in kinds:
            raise ValueError(f"input {i.name} is {i.type}: give a model with float inputs")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape).astype(kinds[i.type])
    return feeds


def _cuda_stage(model: Path, limit: int | None) -> Any:
    """The node's Stage with CUDA asked for, under `limit` (ORT_CUDA_GPU_MEM_LIMIT, as a runtime sets it)."""
    from node.stage import Stage, StageConfig

    old = os.environ.get("ORT_CUDA_GPU_MEM_LIMIT")
    os.environ.pop("ORT_CUDA_GPU_MEM_LIMIT", None)
    if limit:
        os.environ["ORT_CUDA_GPU_MEM_LIMIT"] = str(limit)
    try:
        return Stage(StageConfig(0, str(model)), threads=1, use_cuda=True)
    finally:
        os.environ.pop("ORT_CUDA_GPU_MEM_LIMIT", None)
        if old is not None:
            os.environ["ORT_CUDA_GPU_MEM_LIMIT"] = old


def check_stage(model: Path, index: int, limit: int, seconds: float, checks: Checks) -> bool:
    """The node's stage in this process, CUDA asked for; True where it ran on the CUDA provider."""
    try:
        import numpy as np
        import onnxruntime as ort

        from node.stage import Stage, StageConfig
        from orchestrator.figures.gpu_power import NvmlPowerSampler
    except ImportError as e:
        checks.add("not checked", "stage", f"needs numpy and onnxruntime: {e}")
        return False
    available = ort.get_available_providers()
    checks.add("info", "onnxruntime", f"{ort.__version__}, providers: {', '.join(available)}")
    try:
        cpu = Stage(StageConfig(0, str(model)), threads=1)
        feeds = sample_feeds(cpu.session)
        stage = _cuda_stage(model, limit)
    except Exception as e:
        checks.add("fail", "stage", f"{model.name} did not open: {e}")
        return False
    on_cuda = stage.providers[0] == CUDA
    why = "the CUDA provider did not start" if CUDA in available else "onnxruntime-gpu is not installed"
    if on_cuda:
        checks.add("pass", "CUDA provider", f"the node's stage runs {model.name} on {', '.join(stage.providers)}")
    else:
        checks.add(
            "info",
            "CPU fallback",
            f"CUDA asked, the node's stage runs on {', '.join(stage.providers)}: {why} (onnxruntime {ort.__version__})",
        )
    runs, t0 = 0, time.perf_counter()
    with NvmlPowerSampler([index], period_s=0.05) as power:
        try:
            while time.perf_counter() - t0 < seconds:
                out = stage.run(feeds)
                runs += 1
        except Exception as e:
            checks.add("fail", "stage", f"{model.name} failed on {stage.providers[0]}: {e}")
            return False
        ms = (time.perf_counter() - t0) / runs * 1e3
        time.sleep(0.1)
    watts = [w for _, w in power.samples.get(index, [])]
    if not power.available:
        checks.add("not checked", "NVML power", f"{power.error}")
    elif len(watts) >= 2 and all(w > 0 for w in watts):
        idle = "" if on_cuda else " (the stage ran on the CPU: this is the GPU's idle power)"
        checks.add(
            "pass",
            "NVML power",
            f"GPU {index}: {len(watts)} samples while the stage ran {runs} times ({ms:.1f} ms each): "
            f"mean {sum(watts) / len(watts):.1f} W, peak {max(watts):.1f} W{idle}",
        )
    else:
        checks.add("fail", "NVML power", f"GPU {index}: {len(watts)} readings in {seconds:.1f} s: {power.error}")
    if not on_cuda:
        checks.add("not checked", "outputs vs CPU", f"needs the CUDA provider: {why}")
        checks.add("not checked", "gpu_mem_limit", f"needs the CUDA provider: {why}")
        return False
    ref = cpu.run(feeds)
    diff = max(float(np.max(np.abs(out[k].astype(np.float64) - ref[k]))) for k in ref)
    checks.add(
        "pass" if diff <= TOLERANCE else "fail",
        "outputs vs CPU",
        f"max abs diff {diff:.2e} (allowed {TOLERANCE:g})"
        + ("" if diff <= TOLERANCE else ": with TF32 on (the CUDA provider's use_tf32) float32 matmuls are rounded"),
    )
    check_memory_limit(model, index, limit, checks)
    return True


def check_memory_limit(model: Path, index: int, limit: int, checks: Checks) -> None:
    """`gpu_mem_limit` caps ONNX Runtime's CUDA arena: a cap below the weights must stop the session."""
    with NvmlProcessMemory(index, lambda pid: pid == os.getpid()) as mem:
        pass
    held = mem.peak.get(os.getpid())
    checks.add(
        "info",
        "GPU memory",
        f"this process holds {held / MiB:.0f} MiB on GPU {index} under a {limit / MiB:.0f} MiB cap (the cap is "
        "ORT's arena; the CUDA context and library workspaces are outside it)"
        if held is not None
        else f"NVML gave no figure for this process: {mem.error or 'not listed'}",
    )
    small = max(MiB, model.stat().st_size // 4)
    try:
        tight = _cuda_stage(model, small)
        tight.run(sample_feeds(tight.session))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        cap = f"{small / MiB:.1f} MiB cap"
        if "alloc" in first.lower() or "memory" in first.lower():
            checks.add("pass", "gpu_mem_limit", f"a {cap}, under the weights, stops the stage: {first}")
        else:
            checks.add("fail", "gpu_mem_limit", f"under a {cap} the stage failed for another reason: {first}")
        return
    if tight.providers[0] != CUDA:
        checks.add("not checked", "gpu_mem_limit", f"under a {small / MiB:.1f} MiB cap the stage fell back to the CPU")
    else:
        checks.add("fail", "gpu_mem_limit", f"the stage ran on CUDA under a {small / MiB:.1f} MiB cap: not enforced")


DEVICES = """devices:
  - {{name: {name}, cpus: {cpus}, memory: 4GiB, gpu: {{index: {index}, memory: {limit}B}}}}
"""
JOB = """name: gpu_check
model: {model}
devices: devices.yaml
runtime: local
algorithm: even
stages: 1
source: {name}
duration_s: {seconds}
warmup: 3
concurrency: 1
measure_stages: false
fidelity_check: false
dataset: {{kind: synthetic, seed: 0}}
"""


def check_local_run(model: Path, index: int, limit: int, seconds: float, out: str | None, checks: Checks) -> None:
    """A GPU device on the local runtime, driven as any run is; its report read back."""
    try:
        from rich.console import Console

        from orchestrator.errors import UserError
        from orchestrator.run import execute
    except ImportError as e:
        checks.add("not checked", "local run", f"the project's packages are not importable ({e}): `make install` first")
        return
    name = f"gpu{index}"
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        job = Path(tmp) / "job.yaml"
        (Path(tmp) / "devices.yaml").write_text(
            DEVICES.format(name=name, cpus=min(2, os.cpu_count() or 1), index=index, limit=limit)
        )
        job.write_text(JOB.format(model=model, name=name, seconds=seconds))
        t0 = time.perf_counter()
        try:
            with NvmlProcessMemory(index, is_node_of(name)) as mem:
                run_dir, rep = execute(str(job), runtime="local", out=out, console=Console(file=log, width=120))
        except Exception as e:  # said in one line, with the end of what the run printed
            tail = " | ".join(line.strip() for line in log.getvalue().strip().splitlines()[-4:])
            what = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            checks.add("fail", "local run", what + (f" (the run printed: {tail})" if tail else ""))
            return
    took = time.perf_counter() - t0
    ok = rep["errors"] == 0 and rep["requests"] > 0
    checks.add(
        "pass" if ok else "fail",
        "local run",
        f"{rep['requests']} requests through {name}'s node ({took:.1f} s in all), {rep['errors']} errors"
        + (f" (first: {rep.get('first_error')})" if rep["errors"] else "")
        + f"; run folder {run_dir}",
    )
    use = (rep.get("gpu_use") or {}).get(name)
    if use is None:
        checks.add("fail", "run report", f"report.json has no gpu_use entry for {name}")
        return
    if use["on_gpu"]:
        checks.add("pass", "node provider", f"{name}'s node runs its stage on {', '.join(use['providers'])}")
    else:
        note = next((n for n in rep["notes"] if n.startswith(f"device {name} has GPU")), None)
        checks.add(
            "pass" if note else "fail",
            "fallback named",
            f'the run\'s report says: "{note}"' if note else f"{name} ran on the CPU and the report does not say so",
        )
    energy = (rep.get("gpu_energy") or {}).get(name) or {}
    if str(energy.get("method", "")).startswith("measured") and energy.get("mean_power_w") is not None:
        checks.add(
            "pass",
            "run's NVML power",
            f"mean {energy['mean_power_w']} W, peak {energy['peak_power_w']} W, "
            f"{energy['energy_per_image_j']} J per image (report.json gpu_energy)"
            + ("" if use["on_gpu"] else "; the node ran on the CPU: the GPU's idle power"),
        )
    else:
        checks.add("not checked", "run's NVML power", energy.get("method") or "no gpu_energy in the report")
    diff = (rep.get("agreement") or {}).get("max_abs_diff")
    if use["on_gpu"]:
        verdict = "pass" if diff is not None and diff <= TOLERANCE else "fail"
        checks.add(verdict, "run's outputs vs CPU", f"max abs diff {diff} against the whole model on the CPU")
        peak = max(mem.peak.values(), default=None)
        checks.add(
            "info",
            "node GPU memory",
            f"peak {peak / MiB:.0f} MiB under a {limit / MiB:.0f} MiB cap for ORT's arena"
            if peak is not None
            else f"NVML gave no figure for the node: {mem.error or 'not listed'}",
        )
    else:
        checks.add("info", "run's outputs vs CPU", f"max abs diff {diff}: the node ran on the CPU too")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m orchestrator.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=int, default=0, help="the GPU to check, as NVML numbers it (default 0)")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="an ONNX model with float inputs (default: tiny ViT)")
    ap.add_argument("--gpu-memory", default="1GiB", help="the GPU device's memory cap (gpu_mem_limit), e.g. 512MiB")
    ap.add_argument("--seconds", type=float, default=3.0, help="how long the stage runs under NVML sampling")
    ap.add_argument("--run-seconds", type=float, default=3.0, help="how long the local run sends requests")
    ap.add_argument("--out", help="run folder of the local run (default runs/<time>_gpu_check)")
    ap.add_argument("--require-cuda", action="store_true", help="exit 4 when the CUDA provider cannot be checked")
    ap.add_argument(
        "--continue-without-gpu",
        action="store_true",
        help="go on past discovery where no GPU is found (checks the CPU fallback; exit status stays 3)",
    )
    args = ap.parse_args(argv)
    model = Path(args.model).resolve()
    try:
        limit = parse_size(args.gpu_memory)
    except ValueError as e:
        print(f"gpu-check: --gpu-memory: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not model.is_file():
        print(f"gpu-check: --model: {model}: file not found", file=sys.stderr)
        return EXIT_USAGE
    found = discover()
    if not found.gpus and not args.continue_without_gpu:
        print(f"gpu-check: no GPU found (NVML: {found.nvml_error}; nvidia-smi: {found.smi_error or 'no GPU listed'})")
        return EXIT_NO_GPU
    if found.gpus and args.index not in {g.index for g in found.gpus}:
        print(f"gpu-check: --index: no GPU {args.index} here (found {sorted(g.index for g in found.gpus)})")
        return EXIT_USAGE
    # CUDA numbers GPUs as NVML does, and this process and its node see only the one checked
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(args.index)
    checks = Checks()
    logging.getLogger("node").addHandler(logging.NullHandler())  # the stage's own warnings: said below
    print(f"gpu-check: GPU {args.index}, model {model.name}, gpu_mem_limit {limit / MiB:.0f} MiB", flush=True)
    report_discovery(found, checks)
    cuda = check_stage(model, args.index, limit, args.seconds, checks)
    check_local_run(model, args.index, limit, args.run_seconds, args.out, checks)
    failed, unchecked = checks.count("fail"), checks.count("not checked")
    if failed:
        status = EXIT_FAILED
    elif not found.gpus:
        status = EXIT_NO_GPU
    elif args.require_cuda and not cuda:
        status = EXIT_NO_CUDA
    else:
        status = EXIT_OK
    print(
        f"gpu-check: {len(checks.count('pass'))} passed, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
        + f", {len(unchecked)} not checked"
        + (f" ({', '.join(unchecked)})" if unchecked else "")
        + ("" if found.gpus else "; no GPU here")
        + f"; exit status {status}",
        flush=True,
    )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
