"""The partition benchmark's baseline, in a process of its own: `onnx.utils.extract_model` cutting
each stage of a plan out of the whole model, as a user without this tool would.

Run: python bench/extract_baseline.py MODEL PLAN_JSON OUT_DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx.utils


def main(model: str, plan: str, out: str) -> None:
    for s in json.loads(Path(plan).read_text())["stages"]:
        onnx.utils.extract_model(model, str(Path(out) / s["model"]), s["inputs"], s["outputs"])


if __name__ == "__main__":
    main(*sys.argv[1:4])
