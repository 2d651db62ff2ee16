"""Job features on the local runtime: comparisons, profiled optimal plans, datasets, open loop,
repeats, and rebuilding a run folder's report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from orchestrator.cli import main
from orchestrator.run import execute

THREE = """
devices:
  - {name: phone, cpus: 1, memory: 1GiB, bandwidth: 200mbit}
  - {name: tablet, cpus: 1, memory: 1GiB, bandwidth: 200mbit}
  - {name: laptop, cpus: 1, memory: 2GiB, bandwidth: 200mbit}
"""
ONE = """
devices:
  - {name: laptop, cpus: 1, memory: 2GiB}
"""


def _job(tmp: Path, model: Path, **fields) -> Path:
    (tmp / "three.yaml").write_text(textwrap.dedent(THREE))
    (tmp / "one.yaml").write_text(textwrap.dedent(ONE))
    job = {
        "name": "t",
        "model": str(model),
        "devices": "three.yaml",
        "runtime": "local",
        "requests": 8,
        "warmup": 2,
        "concurrency": 2,
        **fields,
    }
    p = tmp / "job.yaml"
    p.write_text(json.dumps(job))
    return p


def test_compare_runs_each_configuration_side_by_side(tmp_path, tiny_vit, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the profile cache goes under ./.cache
    job = _job(
        tmp_path,
        tiny_vit,
        algorithm="even",
        stages=3,
        source="phone",
        compare=[
            {"name": "optimal", "algorithm": "optimal"},
            {"name": "one-device", "devices": "one.yaml", "source": "laptop"},
        ],
    )
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))
    rows = {r["name"]: r for r in rep["comparison"]}
    assert set(rows) == {"even", "optimal", "one-device"}
    assert rows["one-device"]["devices"] == ["laptop"]
    assert all(r["throughput_fps"] and r["throughput_fps"] > 0 for r in rows.values())
    for name in ("optimal", "one-device"):
        sub = json.loads((run_dir / "compare" / name / "report.json").read_text())
        assert sub["agreement"]["max_abs_diff"] <= 1e-4 and sub["errors"] == 0
    opt = json.loads((run_dir / "compare" / "optimal" / "report.json").read_text())
    assert opt["profile"]["device_total_ms"].keys() == {"phone", "tablet", "laptop"}
    assert opt["prediction_vs_measured"]["throughput_fps"]["predicted"] > 0
    assert (run_dir / "plots" / "comparison.png").stat().st_size > 10_000
    md = (run_dir / "report.md").read_text()
    assert "## Configurations compared" in md and "one-device" in md


def _image_folder(root: Path, classes: int, per_class: int) -> None:
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((40, 48, 3), (c * 25, i * 40, 90), np.uint8)).save(d / f"{i}.JPEG")


def test_dataset_run_measures_accuracy(tmp_path, tiny_vit):
    _image_folder(tmp_path / "val", classes=10, per_class=2)
    job = _job(
        tmp_path,
        tiny_vit,
        stages=2,
        requests=10,
        warmup=0,
        batch=2,
        agreement=4,
        dataset={"kind": "imagefolder", "path": "val", "preprocessing": {"size": 32}},
    )
    _, rep = execute(str(job), out=str(tmp_path / "run"))
    acc = rep["accuracy"]
    assert acc["images"] == 20 and 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
    assert rep["agreement"]["checked"] == 8 and rep["agreement"]["max_abs_diff"] <= 1e-4


def test_dataset_with_wrong_image_size_is_a_user_error(tmp_path, tiny_vit, capsys):
    _image_folder(tmp_path / "val", classes=2, per_class=1)
    job = _job(tmp_path, tiny_vit, dataset={"kind": "imagefolder", "path": "val"})  # 224 px for a 32 px model
    assert main(["run", "--job", str(job), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "job.yaml" in err and "dataset.preprocessing" in err


def test_missing_imagenet_falls_back_to_synthetic_and_says_so(tmp_path, tiny_vit):
    job = _job(tmp_path, tiny_vit, stages=2, dataset={"kind": "imagenet", "path": "nowhere/val.tar"})
    _, rep = execute(str(job), out=str(tmp_path / "run"))
    assert rep["accuracy"]["top1"] is None
    assert any("ImageNet files are absent" in n for n in rep["notes"])


def test_open_loop_repeats_and_report_rebuild(tmp_path, tiny_vit):
    job = _job(tmp_path, tiny_vit, stages=2, rate_hz=40, requests=20, warmup=2, repeat=2)
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))
    assert rep["load"] == {"mode": "open", "rate_hz": 40}
    assert len(rep["repeats"]) == 2 and rep["requests"] == 40
    assert (
        rep["repeat_spread"]["throughput_fps_min"]
        <= rep["throughput_fps"]
        <= rep["repeat_spread"]["throughput_fps_max"]
    )
    # open loop at 40/s: throughput follows the arrival rate, not the pipeline's capacity. The 20
    # measured requests were due 1/40 s apart and each completed its latency after it was due, so
    # the 19 intervals between the first and last completion span 19/40 s give or take the spread
    # of latencies (max - min, counted from the due times), and nothing else
    for r in rep["repeats"]:
        spread_s = (r["latency_ms"]["max"] - r["latency_ms"]["min"]) / 1e3 + 1e-3  # + the histogram's rounding
        assert 19 / (19 / 40 + spread_s) <= r["throughput_fps"] <= 19 / (19 / 40 - spread_s), r
    for p in (run_dir / "plots").glob("*.png"):
        p.unlink()
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert {p.name for p in (run_dir / "plots").glob("*.png")} >= {
        "latency_cdf.png",
        "throughput.png",
        "breakdown.png",
        "timeline.png",
        "partition.png",
        "devices.png",
    }
    assert "## Repeats (2)" in (run_dir / "report.md").read_text()
