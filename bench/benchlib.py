"""What the benchmarks share: the repository on the import path, running a job in a temporary
folder, the ViT-B pipeline they compare against, and one way to end (a verdict line and an exit
status, so that `make bench` stops on a missed target)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = ROOT / "models" / "vit_b16.onnx"


def run_job(job: dict, runtime: str | None = None, quiet: bool = True, keep: Path | None = None) -> dict:
    """Run a job given as a dict and return its first configuration's report; the run folder is
    thrown away unless `keep` names where to leave it."""
    from rich.console import Console

    from orchestrator.run import execute  # the whole orchestrator: only for the benchmarks that run a job

    with tempfile.TemporaryDirectory() as tmp:
        where = keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{job['name']}.yaml"
        path.write_text(json.dumps(job))
        _, rep = execute(str(path), runtime=runtime, out=str(where / job["name"]), console=Console(quiet=quiet))
    return rep


def run_job_reports(
    job: dict, runtime: str | None = None, quiet: bool = True, keep: Path | None = None
) -> tuple[int, dict[str, dict]]:
    """Run a job (with its `compare` entries) through the command line as a user would; return the
    exit status and every configuration's report by name (the job's own under its `adapt`). The
    run folder is thrown away unless `keep` names a folder to leave it in."""
    import subprocess

    with tempfile.TemporaryDirectory() as scratch:
        tmp = keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        path = Path(tmp) / f"{job['name']}.yaml"
        path.write_text(json.dumps(job))
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--job", str(path), "--out", str(out)]
        if runtime:
            cmd += ["--runtime", runtime]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True)
        reports: dict[str, dict] = {}
        if (out / "report.json").exists():
            reports[job.get("adapt", "static")] = json.loads((out / "report.json").read_text())
        for f in sorted((out / "compare").glob("*/report.json")):
            reports[f.parent.name] = json.loads(f.read_text())
        if quiet and done.returncode != 0:
            print(f"exit status {done.returncode}; the end of its output:", done.stderr[-2000:], sep="\n")
    return done.returncode, reports


def answered(rep: dict) -> int:
    """Measured requests answered without error."""
    return int(rep["requests"])


def pipeline_job(model: Path, requests: int, concurrency: int, repeat: int, name: str = "bench_pipeline") -> dict:
    """ViT-B as 2 stages on 2 local nodes of one CPU each: the pipeline the README's figures use.
    `repeat` drives it that many times on one deployment; the report's throughput is their median."""
    return {
        "name": name,
        "model": str(Path(model).resolve()),
        "devices": str(ROOT / "devices" / "local2.yaml"),
        "runtime": "local",
        "stages": 2,
        "requests": requests,
        "warmup": 4,
        "concurrency": concurrency,
        "repeat": repeat,
    }


def repeat_fps(rep: dict) -> list[float]:
    """Throughput of each repeat of a run (one value when it was not repeated)."""
    return [r["throughput_fps"] for r in rep.get("repeats") or [] if r["throughput_fps"]] or [rep["throughput_fps"]]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def verdict(ok: bool, target: str) -> int:
    """Print the last line and return the exit status: 0 when the target is met, 1 when missed."""
    print(f"target met: {target}" if ok else f"TARGET MISSED: {target}", flush=True)
    return 0 if ok else 1
