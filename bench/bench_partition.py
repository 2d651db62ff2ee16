"""Cut ViT-B into 4 stages with `orchestrator partition` against onnx.utils.extract_model on the same cuts.

Each side is timed as a whole process (interpreter start, imports, reading, writing), in the same
run: extract_model once per stage in one process; ours first with an empty weights store (it
stores the model's weights), then with the model stored (only the small stage graphs are
written). Rounds of one extract_model process and a few stored cuts alternate, so that both see
the host's load alike; figures are medians. Exits 1 when the stored cut is under TARGET times faster.

The child processes keep their bytecode in a temporary cache (PYTHONPYCACHEPREFIX), as an
installed package has it, even where PYTHONDONTWRITEBYTECODE is set.

Run: .venv/bin/python bench/bench_partition.py [--stages 4] [--rounds 3] [--cuts 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.models import ensure_vit  # noqa: E402
from orchestrator.partition.weights_store import STORE_ENV, WEIGHTS_FILE  # noqa: E402

BASELINE = Path(__file__).with_name("extract_baseline.py")  # extract_model, nothing of ours loaded
TARGET = 20.0  # times faster than extract_model, model stored


def new_bytes(folder: Path) -> int:
    """Bytes of the folder's files that no other path shares (a hard-linked file is not new)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.stat().st_nlink == 1)


@dataclass
class Timing:
    """One child process: wall-clock and CPU (user + system) seconds."""

    wall_s: float
    cpu_s: float


def timed(cmd: list[str], env: dict[str, str]) -> Timing:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{done.stdout}{done.stderr}")
    return Timing(wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def median(ts: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall_s for t in ts), statistics.median(t.cpu_s for t in ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one extract_model process and --cuts cuts")
    ap.add_argument("--cuts", type=int, default=3, help="cuts of the stored model per round")
    args = ap.parse_args()

    model = ensure_vit(args.model).resolve()
    met = False
    work = Path(tempfile.mkdtemp(prefix="bench_partition_"))
    try:
        store = work / "store"  # beside the plan folders: one file system, so plans hard-link it
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update({STORE_ENV: str(store), "PYTHONPYCACHEPREFIX": str(work / "pycache")})
        devices = work / "devices.yaml"
        devices.write_text("devices:\n" + "".join(f"  - {{name: dev{i}, memory: 4GiB}}\n" for i in range(args.stages)))
        script = Path(sys.executable).with_name("orchestrator")
        cli = [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]
        packages = [str(ROOT / p) for p in ("orchestrator", "common")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], env=env, check=True)  # bytecode cache

        def cut(out: Path) -> Timing:
            argv = ["partition", "--model", str(model), "--devices", str(devices), "--stages", str(args.stages)]
            return timed([*cli, *argv, "--out", str(out)], env)

        first = cut(work / "first")
        plan = json.loads((work / "first" / "plan.json").read_text())
        extract: list[Timing] = []
        stored: list[Timing] = []
        for r in range(args.rounds):  # interleaved, so that both sides see the host's load alike
            out = work / f"extract{r}"
            out.mkdir()
            argv = [sys.executable, str(BASELINE), str(model), str(work / "first" / "plan.json"), str(out)]
            extract.append(timed(argv, env))
            stored += [cut(work / f"stored{r}_{i}") for i in range(args.cuts)]
        theirs, ours = median(extract), median(stored)
        weights = work / "first" / WEIGHTS_FILE
        linked = all(os.path.samefile(d / WEIGHTS_FILE, weights) for d in work.glob("stored*"))

        print(
            f"model {model.name}: {model.stat().st_size / 1e6:.0f} MB; {args.stages} stages, cuts after "
            + ", ".join(s["outputs"][0] for s in plan["stages"][:-1])
        )
        print(
            f"onnx.utils.extract_model, same cuts: {theirs.wall_s:.2f} s (cpu {theirs.cpu_s:.2f} s; median of "
            f"{len(extract)} processes), writes {new_bytes(work / 'extract0') / 1e6:.0f} MB"
        )
        print(
            f"orchestrator partition, first cut (empty store): {first.wall_s:.2f} s (cpu {first.cpu_s:.2f} s), "
            f"{theirs.wall_s / first.wall_s:.1f}x faster; stores "
            f"{sum(f.stat().st_size for f in store.glob('*/*')) / 1e6:.0f} MB once, "
            f"writes {new_bytes(work / 'first') / 1e3:.0f} kB beside its link to them"
        )
        walls = sorted(t.wall_s for t in stored)
        print(
            f"orchestrator partition, model stored: {ours.wall_s:.2f} s (cpu {ours.cpu_s:.2f} s; median of "
            f"{len(stored)}, {walls[0]:.2f}-{walls[-1]:.2f}), {theirs.wall_s / ours.wall_s:.1f}x faster "
            f"(cpu {theirs.cpu_s / ours.cpu_s:.1f}x); writes {new_bytes(work / 'stored0_0') / 1e3:.0f} kB, "
            "weights.bin " + ("a hard link to the stored copy" if linked else "NOT a hard link to the stored copy")
        )
        met = theirs.wall_s / ours.wall_s >= TARGET and linked
        print(f"target: model stored, at least {TARGET:.0f}x faster than extract_model: {'met' if met else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
