"""Energy-aware planning, measured: the least-energy plan against the other plans, on Docker.

On the default testbed with DVFS levels and radio energy (devices/edge4_levels.yaml) it runs
ViT-B under seven plans, each a configuration of one job (`orchestrator run`, docker runtime):

- `optimal`, objective energy, at three latency budgets (chosen between the fastest plan's
  predicted latency and the unconstrained least-energy plan's);
- the latency-optimal and throughput-optimal plans (every device at its own cpus);
- fast-only and slow-only: the least-energy plan with every device held at its fastest level (its
  own cpus) or at its slowest (a devices file with each device's slowest level as its cpus).

For each budget it prints every plan's measured energy per inference (each node's CPU time at its
level's power, idle power over the window, the radio energy of the bytes it moved) and its
measured latency (a request's path: compute and transfers, queueing left out, as the planner
predicts it), and checks the two targets: the energy plan spends no more than any other plan
that meets the same budget, and its predicted energy and latency are within 15% of measured.
The plans' Pareto front (`orchestrator partition --sweep`, on the profile the runs measured) is
drawn into the kept run folder.

Run: .venv/bin/python bench/bench_energy.py [--requests 16] [--keep runs/bench_energy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml
from benchlib import DEFAULT_MODEL, ROOT, run_job_reports, verdict

from orchestrator.config import Testbed, load_devices
from orchestrator.partition import place
from orchestrator.profiling import cached_profile

DEVICES = ROOT / "devices" / "edge4_levels.yaml"
SOURCE = "laptop"
TOLERANCE = 0.15
STAGE_SLACK_MS = 10.0  # a stage of a few ms is mostly the node's per-frame overhead, counted in its busy time
PATH_PARTS = {"compute", "serialisation", "transfer", "deserialisation"}  # a request's path, not its waits


def pinned_devices(path: Path, out: Path, which: str) -> Path:
    """The devices file with every device held at one level: its own cpus (fastest) or its
    slowest level as its cpus and power (slowest); no levels left to choose."""
    doc = yaml.safe_load(path.read_text())
    for d in doc["devices"]:
        power = d["power"]
        levels = power.pop("levels", [])
        if which == "slowest" and levels:
            low = min(levels, key=lambda lv: lv["cpus"])
            d["cpus"], power["max_w"] = low["cpus"], low["max_w"]
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def path_latency_ms(rep: dict) -> float:
    """A request's path as measured: the mean compute of every stage plus every hop's serialisation,
    transfer and deserialisation (queueing and link waits left out)."""
    return sum(row["mean_ms"] for row in rep["breakdown"] if row["part"] in PATH_PARTS)


def energy_mj(rep: dict, kind: str) -> float | None:
    total = (rep.get("energy_split") or {}).get("total") or {}
    fig = total.get(kind)
    return None if fig is None else fig["total_j"] * 1e3


def budgets(model: Path, tb: Testbed) -> list[float]:
    """Three latency budgets between the fastest plan's latency and the unconstrained least-energy
    plan's, from the docker profile where one is cached (else FLOPs)."""
    prof = cached_profile(model, tb, "docker", batch=1)
    table = prof.table if prof is not None else None
    how = {"algorithm": "optimal", "source": SOURCE, "cost_table": table}
    _, fast = place(model, tb, objective="latency", **how)
    _, free = place(model, tb, objective="energy", **how)
    lo, hi = fast.predicted.latency_s, free.predicted.latency_s
    if hi <= lo * 1.2:
        hi = lo * 2.0
    return [round(lo + (hi - lo) * f, 2) for f in (0.25, 0.55, 0.9)]


def job(model: Path, devices: dict[str, Path], budget_s: list[float], requests: int) -> dict:
    """One job: the latency-optimal plan as its own configuration (so that no variant inherits a
    budget it should not have), the others as its `compare` entries."""
    energy = [{"name": f"energy_{b:g}s", "objective": "energy", "latency_budget": f"{b}s"} for b in budget_s]
    return {
        "name": "bench_energy",
        "model": str(model),
        "devices": str(devices["levels"]),
        "algorithm": "optimal",
        "objective": "latency",
        "source": SOURCE,
        "requests": requests,
        "warmup": 4,
        "concurrency": 4,  # the pipeline full: one inference leaves it each period, as the model counts idle power
        "agreement": 4,
        "dataset": {"kind": "synthetic", "seed": 0},
        "compare": [
            *energy,
            {"name": "throughput_optimal", "objective": "throughput"},
            {"name": "fast_only", "objective": "energy", "devices": str(devices["fast"])},
            {"name": "slow_only", "objective": "energy", "devices": str(devices["slow"])},
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--keep", default=str(ROOT / "runs" / "bench_energy"), help="where the run folder is left")
    ap.add_argument("--budgets", help="three latency budgets in seconds, comma-separated (default: chosen)")
    ap.add_argument("--from-run", action="store_true", help="read the kept run folder's reports again, run nothing")
    args = ap.parse_args()
    model = Path(args.model)
    keep = Path(args.keep).resolve()
    keep.mkdir(parents=True, exist_ok=True)
    devices = {
        "levels": DEVICES,
        "fast": pinned_devices(DEVICES, keep / "edge4_fast_only.yaml", "fastest"),
        "slow": pinned_devices(DEVICES, keep / "edge4_slow_only.yaml", "slowest"),
    }
    tb = load_devices(DEVICES)
    if args.from_run:
        budget_s = json.loads((keep / "bench_energy.json").read_text())["budgets_s"]
        return judge(model, keep, budget_s, kept_reports(keep / "run"))
    print("profiling ViT-B's blocks on the docker testbed (cached after the first time) ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "profile",
            "--model",
            str(model),
            "--devices",
            str(DEVICES),
            "--runtime",
            "docker",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    budget_s = [float(x) for x in args.budgets.split(",")] if args.budgets else budgets(model, tb)
    print(f"latency budgets: {', '.join(f'{b:g} s' for b in budget_s)}", flush=True)
    rc, reps = run_job_reports(job(model, devices, budget_s, args.requests), runtime="docker", keep=keep)
    if rc != 0 or not reps:
        print(f"the job failed (exit {rc}); run folder {keep / 'run'}")
        return verdict(False, "the runs completed")
    (keep / "bench_energy.json").write_text(json.dumps({"budgets_s": budget_s}, indent=2))
    return judge(model, keep, budget_s, reps)


def scaled_stage_checks(reps: dict[str, dict], names: dict[str, str]) -> list[tuple[bool, str]]:
    """Profiles are measured at each device's own cpus and scaled to a level by cpus / level: every
    stage that ran below its device's own cpus, its predicted busy time (the planner's, scaled)
    against its measured compute."""
    out = []
    for name, rep in reps.items():
        pred = (rep.get("predicted_from_blocks") or {}).get("stage_s") or []
        levels = rep.get("levels") or {}
        for st, p in zip(rep.get("stages", []), pred, strict=False):
            lv = levels.get(st["device"]) or {}
            if not lv.get("applied") or lv.get("read_back") is None:
                continue  # at the device's own cpus: nothing scaled
            got = st["compute_ms"]["mean"]
            err = p * 1e3 / got - 1 if got else float("inf")
            out.append(
                (
                    abs(err) <= TOLERANCE or abs(p * 1e3 - got) <= STAGE_SLACK_MS,
                    f"{names.get(name, name)}: stage {st['index']} on {st['device']} at {lv['cpus']:g} CPUs, "
                    f"scaled profile {p * 1e3:.0f} ms against {got:.0f} ms measured ({err:+.1%})",
                )
            )
    return out


def kept_reports(run: Path) -> dict[str, dict]:
    """The reports of a kept run folder, by configuration name (the job's own as "static")."""
    reps = {"static": json.loads((run / "report.json").read_text())}
    for f in sorted((run / "compare").glob("*/report.json")):
        reps[f.parent.name] = json.loads(f.read_text())
    return reps


def judge(model: Path, keep: Path, budget_s: list[float], reps: dict[str, dict]) -> int:
    """Every plan's figures, the checks against the targets, and the Pareto sweep drawn."""
    names = {"static": "latency_optimal"}
    rows = {}
    for name, rep in reps.items():
        # the planner's own estimate (the profiled blocks that chose the plan), not the one remade
        # after each stage was measured on its device
        pred = rep.get("predicted_from_blocks") or rep.get("predicted") or {}
        rows[names.get(name, name)] = {
            "measured_mj": energy_mj(rep, "measured"),
            "predicted_mj": energy_mj(rep, "predicted"),
            "latency_ms": path_latency_ms(rep),
            "predicted_latency_ms": (pred.get("latency_s") or 0) * 1e3,
            "measured_stages_latency_ms": ((rep.get("predicted") or {}).get("latency_s") or 0) * 1e3,
            "fps": rep.get("throughput_fps"),
            "plan": " > ".join(f"{s['device']}" for s in rep.get("stages", [])),
            "errors": rep.get("errors"),
        }
    print(f"{'plan':>20} {'measured mJ':>12} {'predicted mJ':>13} {'path ms':>9} {'pred ms':>9} {'fps':>6}  stages")
    for name, r in rows.items():
        print(
            f"{name:>20} {r['measured_mj'] or float('nan'):>12.1f} {r['predicted_mj'] or float('nan'):>13.1f} "
            f"{r['latency_ms']:>9.1f} {r['predicted_latency_ms']:>9.1f} {r['fps'] or 0:>6.3f}  {r['plan']}"
        )
    (keep / "bench_energy.json").write_text(json.dumps({"budgets_s": budget_s, "plans": rows}, indent=2))
    checks = []
    others = ["latency_optimal", "throughput_optimal", "fast_only", "slow_only"]
    for b in budget_s:
        mine = rows.get(f"energy_{b:g}s")
        if mine is None or mine["measured_mj"] is None:
            checks.append((False, f"budget {b:g} s: no measured energy for the energy plan"))
            continue
        meeting = {o: rows[o] for o in others if o in rows and rows[o]["latency_ms"] <= b * 1e3}
        beaten = {
            o: r for o, r in meeting.items() if r["measured_mj"] is not None and r["measured_mj"] < mine["measured_mj"]
        }
        shown = ", ".join(f"{o} {r['measured_mj']:.1f}" for o, r in meeting.items()) or "none meets it"
        checks.append(
            (
                not beaten,
                f"budget {b:g} s: energy plan {mine['measured_mj']:.1f} mJ measured, at most every other plan "
                f"meeting the budget ({shown})",
            )
        )
        e_err = mine["predicted_mj"] / mine["measured_mj"] - 1 if mine["predicted_mj"] else float("inf")
        l_err = mine["predicted_latency_ms"] / mine["latency_ms"] - 1 if mine["latency_ms"] else float("inf")
        checks.append((abs(e_err) <= TOLERANCE, f"budget {b:g} s: predicted energy {e_err:+.1%} of measured"))
        checks.append((abs(l_err) <= TOLERANCE, f"budget {b:g} s: predicted latency {l_err:+.1%} of measured"))
    checks += scaled_stage_checks(reps, names)
    sweep = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "partition",
            "--model",
            str(model),
            "--devices",
            str(DEVICES),
            "--algorithm",
            "optimal",
            "--objective",
            "energy",
            "--source",
            SOURCE,
            "--sweep",
            f"latency_budget={budget_s[0] * 0.8:.2f}s:{budget_s[-1] * 1.3:.2f}s:8",
            "--out",
            str(keep / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    print(sweep.stdout[-3000:] if sweep.returncode == 0 else f"sweep failed: {sweep.stderr[-1000:]}")
    for ok, line in checks:
        print(f"  {'pass  ' if ok else 'MISSED'} {line}")
    missed = [line for ok, line in checks if not ok]
    return verdict(not missed, "every figure within its target" if not missed else f"{len(missed)} missed")


if __name__ == "__main__":
    raise SystemExit(main())
