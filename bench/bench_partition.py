"""Partition a ViT-B into 4 stages: ours against onnx.utils.extract_model on the same cuts.

Run: .venv/bin/python bench/bench_partition.py [--stages 4] [--cache .cache]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx.utils  # noqa: E402

from orchestrator.config import Device, Testbed  # noqa: E402
from orchestrator.models import ensure_vit  # noqa: E402
from orchestrator.partition import partition  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    args = ap.parse_args()

    model = ensure_vit(args.model)
    testbed = Testbed(devices=[Device(name=f"dev{i}", memory="4GiB") for i in range(args.stages)])

    work = Path(tempfile.mkdtemp(prefix="bench_partition_"))
    try:
        t = time.perf_counter()
        plan = partition(model, testbed, stages=args.stages, out_dir=work / "ours")
        ours = time.perf_counter() - t

        ref = work / "extract"
        ref.mkdir()
        t = time.perf_counter()
        for s in plan.stages:
            onnx.utils.extract_model(str(model), str(ref / s.model), s.inputs, s.outputs)
        theirs = time.perf_counter() - t

        size = sum(f.stat().st_size for f in (work / "ours").iterdir())
        ref_size = sum(f.stat().st_size for f in ref.iterdir())
        print(
            f"model {model.name}: {model.stat().st_size / 1e6:.0f} MB; cuts after "
            + ", ".join(s.outputs[0] for s in plan.stages[:-1])
        )
        print(f"written: ours {size / 1e6:.0f} MB, extract_model {ref_size / 1e6:.0f} MB")
        print(
            f"partition ViT-B into {args.stages} stages: ours {ours:.2f} s, "
            f"onnx.utils.extract_model {theirs:.1f} s, speed-up {theirs / ours:.1f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
