"""Loader throughput: can decoding + ViT preprocessing keep ahead of the pipeline?

Builds ~200 realistic-size JPEGs (500x375 gradient + noise, quality 90, like ImageNet val)
into an ILSVRC2012-style val tar + devkit in a temp folder, reads them in place through
orchestrator.datasets with the Prefetcher, and prints images/s against the pipeline's
throughput measured in the same run (ViT-B as 2 stages on 2 local nodes, synthetic inputs,
median of its repeats). Target: the loader's rate (threads, median of --rounds) at least 3.0x
the pipeline's; exits 1 when missed.

    .venv/bin/python bench/bench_loader.py [--images 200] [--workers 2] [--rounds 3]

Threads are the Prefetcher's default: PIL decodes and resamples without the GIL, so two
threads use both cores with no tensor copies; the process row includes spawn start-up.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import DEFAULT_MODEL, median, pipeline_job, repeat_fps, run_job, verdict
from PIL import Image

from orchestrator.datasets import Dataset, Prefetcher, open_dataset

TARGET = 3.0


def _element(typ: int, data: bytes) -> bytes:
    return struct.pack("<II", typ, len(data)) + data + b"\0" * (-len(data) % 8)


def _matrix(cls: int, dims: tuple[int, ...], body: bytes, name: bytes = b"") -> bytes:
    head = _element(6, struct.pack("<II", cls, 0)) + _element(5, struct.pack(f"<{len(dims)}i", *dims))
    return _element(14, head + _element(1, name) + body)


def synsets_mat(rows: list[tuple[int, str]]) -> bytes:
    """A MATLAB v5 file with a 1xN `synsets` struct (ILSVRC2012_ID, WNID), like the devkit's meta.mat."""
    fields = [b"ILSVRC2012_ID", b"WNID"]
    body = _element(5, struct.pack("<i", 32)) + _element(1, b"".join(f.ljust(32, b"\0") for f in fields))
    for i, wnid in rows:
        body += _matrix(6, (1, 1), _element(9, struct.pack("<d", i)))
        body += _matrix(4, (1, len(wnid)), _element(4, wnid.encode("utf-16-le")))
    header = b"MATLAB 5.0 MAT-file, written by bench_loader".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    return header + _matrix(2, (1, len(rows)), body, b"synsets")


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_archives(root: Path, n: int, classes: int = 100) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    val = root / "ILSVRC2012_img_val.tar"
    ids = [int(rng.integers(1, classes + 1)) for _ in range(n)]
    with tarfile.open(val, "w") as tf:
        for k in range(n):
            base = np.stack([xx * 255 / 500, yy * 255 / 375, (xx + yy) * 255 / 875], axis=-1)
            base = base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 25, (375, 500, 3))
            b = io.BytesIO()
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(b, format="JPEG", quality=90)
            _add(tf, f"ILSVRC2012_val_{k + 1:08d}.JPEG", b.getvalue())
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        _add(
            tf,
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "".join(f"{i}\n" for i in ids).encode(),
        )
        _add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", synsets_mat([(i, f"n{i:08d}") for i in range(1, classes + 1)]))
    return val


def measure(ds: Dataset, passes: int, workers: int, mode: str, batch: int, depth: int) -> float:
    """Images/s over `passes` passes, pool start-up included (it is paid once per run)."""
    indices = list(range(len(ds))) * passes
    t = time.perf_counter()
    n = 0
    with Prefetcher(ds, indices, batch=batch, workers=workers, depth=depth, mode=mode) as pf:
        for x, _ in pf:
            n += len(x)
    return n / (time.perf_counter() - t)


def pipeline_fps(model: Path, requests: int, repeat: int) -> float:
    """The pipeline's images/s, measured now: the loader has to keep ahead of this machine's
    pipeline as it is loaded today, not of a figure from another day."""
    rep = run_job(pipeline_job(model, requests, concurrency=4, repeat=repeat, name="bench_loader_pipeline"))
    if not rep["throughput_fps"]:
        raise SystemExit(f"the pipeline completed no request: {rep['first_error']}")
    runs = repeat_fps(rep)
    print(
        f"pipeline (ViT-B, 2 stages on 2 local nodes): {', '.join(f'{x:.3f}' for x in runs)} images/s, "
        f"median {rep['throughput_fps']:.3f}" + (f" ({rep['errors']} requests failed)" if rep["errors"] else ""),
        flush=True,
    )
    return rep["throughput_fps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3, help="passes over the images per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of the threads row; the median counts")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="the pipeline's model")
    ap.add_argument("--pipeline-requests", type=int, default=16, help="requests per repeat of the pipeline run")
    ap.add_argument("--pipeline-repeat", type=int, default=3)
    args = ap.parse_args()
    from orchestrator.models import ensure_vit  # here: the process row's workers start from this module

    model = ensure_vit(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        val = make_archives(root, args.images)
        print(
            f"made {args.images} JPEGs (500x375, q90, {val.stat().st_size / args.images / 1024:.0f} KiB avg) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        t = time.perf_counter()
        ds = open_dataset({"kind": "imagenet-tar", "path": str(val), "cache_dir": str(root / "cache")})
        print(f"indexed the tar in {1000 * (time.perf_counter() - t):.0f} ms")
        measure(ds, 1, 0, "thread", args.batch, args.depth)  # warm the page cache
        threads = f"{args.workers} threads"
        results = {"inline (no pool)": measure(ds, args.passes, 0, "thread", args.batch, args.depth)}
        rounds = [measure(ds, args.passes, args.workers, "thread", args.batch, args.depth) for _ in range(args.rounds)]
        results[threads] = median(rounds)
        results[f"{args.workers} processes"] = measure(ds, args.passes, args.workers, "process", args.batch, args.depth)
        for k, v in results.items():
            extra = f"  (median of {', '.join(f'{x:.1f}' for x in rounds)})" if k == threads else ""
            print(f"  {k:18s} {v:7.1f} images/s{extra}", flush=True)
    pipeline = pipeline_fps(model, args.pipeline_requests, args.pipeline_repeat)
    fps = results[threads]
    ratio = fps / pipeline
    print(
        f"loader {fps:.1f} images/s ({threads}) vs pipeline {pipeline:.3f} images/s: "
        f"{ratio:.2f}x (target >= {TARGET:.1f}x)"
    )
    return verdict(ratio >= TARGET, f"loader at {ratio:.2f}x the pipeline's rate, target >= {TARGET:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
