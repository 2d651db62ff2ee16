"""Pipeline efficiency: ViT-B as 2 stages on 2 local nodes, enough requests in flight.

Prints measured throughput (median of several repeats on one deployment) times the slowest
stage's median compute time, both from the same run. 1.0 means the pipeline is as fast as its
slowest stage allows. Target >= 0.85; exits 1 when missed.
"""

from __future__ import annotations

import argparse
import sys

from benchlib import DEFAULT_MODEL, pipeline_job, repeat_fps, run_job, verdict

from orchestrator.models import ensure_vit

TARGET = 0.85


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--requests", type=int, default=40, help="requests per repeat")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="drive the pipeline this many times; median throughput")
    a = ap.parse_args()
    model = ensure_vit(a.model)
    rep = run_job(pipeline_job(model, a.requests, a.concurrency, a.repeat))
    if rep["errors"]:
        print(f"{rep['errors']} requests failed: {rep['first_error']}")
    fps = rep["throughput_fps"]
    slowest = max(s["compute_ms"]["p50"] for s in rep["stages"])
    eff = fps * slowest / 1e3
    for s in rep["stages"]:
        print(f"stage {s['index']} on {s['device']}: compute p50 {s['compute_ms']['p50']:.1f} ms")
    runs = repeat_fps(rep)
    print(f"throughput per repeat: {', '.join(f'{x:.3f}' for x in runs)} images/s (median {fps:.3f})")
    print(
        f"pipeline efficiency: throughput {fps:.3f} images/s against the slowest stage's "
        f"{1e3 / slowest:.3f} images/s (p50 {slowest:.1f} ms) = {eff:.3f} (target >= {TARGET})"
    )
    return verdict(not rep["errors"] and eff >= TARGET, f"pipeline efficiency {eff:.3f}, target >= {TARGET}")


if __name__ == "__main__":
    sys.exit(main())
