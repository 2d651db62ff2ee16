"""Cut ViT-B into 4 stages with `orchestrator partition` against onnx.utils.extract_model on the same cuts.

Each side is timed as a whole process (interpreter start, imports, reading, writing), in the same
run: extract_model once per stage in one process; ours first with an empty weights store (it
stores the model's weights), then with the model stored (only the small stage graphs are
written; the median of several runs). Exits 1 when the stored cut is under TARGET times faster.

The child processes keep their bytecode in a temporary cache (PYTHONPYCACHEPREFIX), as an
installed package has it, even where PYTHONDONTWRITEBYTECODE is set.

Run: .venv/bin/python bench/bench_partition.py [--stages 4] [--runs 7] [--extract-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.models import ensure_vit  # noqa: E402
from orchestrator.partition.weights_store import STORE_ENV, WEIGHTS_FILE  # noqa: E402

TARGET = 20.0  # times faster than extract_model, model stored

EXTRACT = """
import json, sys
from pathlib import Path
import onnx.utils
model, plan, out = sys.argv[1:]
for s in json.loads(Path(plan).read_text())["stages"]:
    onnx.utils.extract_model(model, str(Path(out) / s["model"]), s["inputs"], s["outputs"])
"""


def new_bytes(folder: Path) -> int:
    """Bytes of the folder's files that no other path shares (a hard-linked file is not new)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.stat().st_nlink == 1)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{done.stdout}{done.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--runs", type=int, default=7, help="cuts of the stored model (median)")
    ap.add_argument("--extract-runs", type=int, default=3, help="extract_model processes (median)")
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
        warm = "import orchestrator.cli, orchestrator.config, orchestrator.partition"
        subprocess.run([sys.executable, "-c", warm], env=env, check=True)  # fill the bytecode cache

        def cut(out: Path) -> float:
            argv = ["partition", "--model", str(model), "--devices", str(devices), "--stages", str(args.stages)]
            return timed([*cli, *argv, "--out", str(out)], env)

        first = cut(work / "first")
        stored = [cut(work / f"stored{i}") for i in range(args.runs)]
        plan = json.loads((work / "first" / "plan.json").read_text())

        extract = []
        for i in range(args.extract_runs):
            out = work / f"extract{i}"
            out.mkdir()
            argv = [sys.executable, "-c", EXTRACT, str(model), str(work / "first" / "plan.json"), str(out)]
            extract.append(timed(argv, env))
        theirs = statistics.median(extract)
        ours = statistics.median(stored)
        weights = work / "first" / WEIGHTS_FILE
        linked = all(os.path.samefile(work / f"stored{i}" / WEIGHTS_FILE, weights) for i in range(args.runs))

        print(
            f"model {model.name}: {model.stat().st_size / 1e6:.0f} MB; {args.stages} stages, cuts after "
            + ", ".join(s["outputs"][0] for s in plan["stages"][:-1])
        )
        print(
            f"onnx.utils.extract_model, same cuts: {theirs:.2f} s (median of {len(extract)} processes), "
            f"writes {new_bytes(work / 'extract0') / 1e6:.0f} MB"
        )
        print(
            f"orchestrator partition, first cut (empty store): {first:.2f} s, {theirs / first:.1f}x faster; "
            f"stores {sum(f.stat().st_size for f in store.glob('*/*')) / 1e6:.0f} MB once, "
            f"writes {new_bytes(work / 'first') / 1e3:.0f} kB beside its link to them"
        )
        print(
            f"orchestrator partition, model stored: {ours:.2f} s (median of {len(stored)}; "
            f"{min(stored):.2f}-{max(stored):.2f}), {theirs / ours:.1f}x faster; writes "
            f"{new_bytes(work / 'stored0') / 1e3:.0f} kB, weights.bin "
            + ("a hard link to the stored copy" if linked else "NOT a hard link to the stored copy")
        )
        met = theirs / ours >= TARGET and linked
        print(f"target: model stored, at least {TARGET:.0f}x faster than extract_model: {'met' if met else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
