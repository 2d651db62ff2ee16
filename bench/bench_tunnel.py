"""Adapting to a fading link: the tunnel's fade (scenarios/tunnel.yaml without its device actions,
so that no device is lost and `static` runs to the end) under `static`, `adaptive` and `oracle`,
in one job on the docker runtime, ViT-B over devices/edge4.yaml from the phone.

Prints the images each policy completed side by side, and the ratios: adaptive over static
(target >= 1.5) and adaptive over oracle (target >= 0.75). Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from benchlib import DEFAULT_MODEL, ROOT, answered, run_job_reports, verdict

from orchestrator.models import ensure_vit

TUNNEL = ROOT / "scenarios" / "tunnel.yaml"


def fade_only() -> dict:
    """The tunnel's link events, its device actions left out."""
    scenario = yaml.safe_load(TUNNEL.read_text())
    scenario["events"] = [e for e in scenario["events"] if "action" not in e]
    return scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of measured requests")
    ap.add_argument("--runtime", default="docker")
    ap.add_argument("--keep", type=Path, help="leave the run folder here")
    a = ap.parse_args()
    model = ensure_vit(a.model)
    job = {
        "name": "bench_tunnel",
        "model": str(model),
        "devices": str(ROOT / "devices" / "edge4.yaml"),
        "algorithm": "optimal",
        "source": "phone",
        "duration_s": a.duration,
        "warmup": 4,
        "concurrency": 4,
        "fidelity_check": False,
        "scenario": fade_only(),
        "adapt": "adaptive",
        "compare": [{"name": "static", "adapt": "static"}, {"name": "oracle", "adapt": "oracle"}],
    }
    status, reports = run_job_reports(job, runtime=a.runtime, keep=a.keep)
    if set(reports) != {"adaptive", "static", "oracle"}:
        print(f"the job did not write every report (exit status {status}; got {sorted(reports)})")
        return 1
    print(f"{'policy':<10} {'images':>7} {'fps':>6} {'plans':>6} {'errors':>7}")
    for name in ("static", "adaptive", "oracle"):
        rep = reports[name]
        print(
            f"{name:<10} {answered(rep):>7} {rep['throughput_fps'] or 0:>6.2f} "
            f"{len(rep.get('plans') or []):>6} {rep['errors']:>7}"
        )
    for name in ("adaptive", "oracle"):
        for p in reports[name].get("plans") or []:
            print(f"  {name} plan {p['index']} ({p['reason']}): {' > '.join(p['devices'])}")
    ad, st, orc = (answered(reports[n]) for n in ("adaptive", "static", "oracle"))
    vs_static = ad / st if st else float("inf")
    vs_oracle = ad / orc if orc else 0.0
    print(f"adaptive / static: {vs_static:.2f} (target >= 1.5); adaptive / oracle: {vs_oracle:.2f} (target >= 0.75)")
    return verdict(vs_static >= 1.5 and vs_oracle >= 0.75, "adaptive >= 1.5x static and >= 0.75x oracle")


if __name__ == "__main__":
    sys.exit(main())
