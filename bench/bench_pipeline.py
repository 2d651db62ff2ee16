"""Pipeline efficiency: ViT-B as 2 stages on 2 local nodes, enough requests in flight.

Prints measured throughput times the slowest stage's median compute time, both from the
same run. 1.0 means the pipeline is as fast as its slowest stage allows; target >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.models import ensure_vit  # noqa: E402
from orchestrator.run import execute  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    model = ensure_vit(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.yaml"
        job.write_text(
            json.dumps(
                {
                    "name": "bench_pipeline",
                    "model": str(model),
                    "devices": str(ROOT / "devices" / "local2.yaml"),
                    "runtime": "local",
                    "stages": 2,
                    "requests": a.requests,
                    "warmup": 4,
                    "concurrency": a.concurrency,
                }
            )
        )
        _, rep = execute(str(job), out=str(Path(tmp) / "run"), console=Console(quiet=True))
    fps = rep["throughput_fps"]
    slowest = max(s["compute_ms"]["p50"] for s in rep["stages"])
    eff = fps * slowest / 1e3
    for s in rep["stages"]:
        print(f"stage {s['index']} on {s['device']}: compute p50 {s['compute_ms']['p50']:.1f} ms")
    print(
        f"pipeline efficiency: throughput {fps:.3f} images/s x slowest stage p50 {slowest:.1f} ms "
        f"= {eff:.3f} (target >= 0.85)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
