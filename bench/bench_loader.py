"""Loader throughput: can decoding + ViT preprocessing keep ahead of the pipeline?

Builds ~200 realistic-size JPEGs (500x375 gradient + noise, quality 90, like ImageNet val)
into an ILSVRC2012-style val tar + devkit in a temp folder, reads them in place through
orchestrator.datasets with the Prefetcher, and prints images/s against the pipeline's
throughput (ViT-B on this machine: about 3.5 images/s).

    .venv/bin/python bench/bench_loader.py [--images 200] [--workers 2] [--pipeline-fps 3.5]

Threads are the Prefetcher's default: PIL decodes and resamples without the GIL, so two
threads use both cores with no tensor copies; the process row includes spawn start-up.
"""

from __future__ import annotations

import argparse
import io
import struct
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from orchestrator.datasets import Dataset, Prefetcher, open_dataset


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3, help="passes over the images per measurement")
    ap.add_argument("--pipeline-fps", type=float, default=3.5, help="pipeline throughput to compare with")
    args = ap.parse_args()
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
        results = {"inline (no pool)": measure(ds, args.passes, 0, "thread", args.batch, args.depth)}
        results[f"{args.workers} threads"] = measure(ds, args.passes, args.workers, "thread", args.batch, args.depth)
        results[f"{args.workers} processes"] = measure(ds, args.passes, args.workers, "process", args.batch, args.depth)
        for k, v in results.items():
            print(f"  {k:18s} {v:7.1f} images/s")
        fps = results[f"{args.workers} threads"]
        print(
            f"loader {fps:.0f} images/s vs pipeline {args.pipeline_fps} images/s: "
            f"{fps / args.pipeline_fps:.0f}x (target >= 3x)"
        )


if __name__ == "__main__":
    main()
