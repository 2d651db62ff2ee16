"""ImageNet validation data in the layouts people have, read in place, plus a prefetcher.

    ds = open_dataset({"kind": "imagenet-tar", "path": "/data/ILSVRC2012_img_val.tar", "limit": 1000})
    ds.label(0), ds.load(0)  # int in 0..999, float32 [3, 224, 224] in [-1, 1]
    with Prefetcher(ds, batch=8, workers=2) as pf:
        for x, y in pf: ...

Errors in the spec or the data are ValueError with a one-line message that starts with the
spec field at fault (`path: ...`, `devkit: ...`) so the caller can name the job file field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.datasets.base import Dataset, Preprocessing, Subset, balanced_indices, preprocess
from orchestrator.datasets.files import ImageFolder, ListFile, Synthetic, read_class_list
from orchestrator.datasets.imagenet_tar import DEVKIT, VAL_TAR, ImageNetValTar, tar_index
from orchestrator.datasets.prefetch import Prefetcher

__all__ = [
    "Dataset",
    "ImageFolder",
    "ImageNetValTar",
    "ListFile",
    "Prefetcher",
    "Preprocessing",
    "Subset",
    "Synthetic",
    "balanced_indices",
    "open_dataset",
    "preprocess",
    "tar_index",
]

KINDS = ("imagenet-tar", "imagefolder", "list", "synthetic", "imagenet")
_FIELDS = {
    "kind",
    "path",
    "devkit",
    "classes",
    "limit",
    "seed",
    "count",
    "num_classes",
    "preprocessing",
    "size",
    "mode",
    "cache_dir",
}


def _as_dict(spec: Any) -> dict[str, Any]:
    """Accept a mapping, a pydantic model (the job file's DatasetSpec) or any attribute object."""
    if isinstance(spec, Mapping):
        d = dict(spec)
        unknown = sorted(set(d) - _FIELDS)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown dataset field (known: {', '.join(sorted(_FIELDS))})")
        return d
    if hasattr(spec, "model_dump"):
        return {k: v for k, v in spec.model_dump().items() if k in _FIELDS}
    return {k: getattr(spec, k) for k in _FIELDS if hasattr(spec, k)}


def _preprocessing(d: dict[str, Any]) -> Preprocessing:
    p = d.get("preprocessing")
    if isinstance(p, Preprocessing):
        return p
    opts = dict(p or {})
    for k in ("size", "mode"):
        if d.get(k) is not None:
            opts[k] = d[k]
    bad = sorted(set(opts) - {"size", "mode", "mean", "std"})
    if bad:
        raise ValueError(f"preprocessing.{bad[0]}: unknown field (known: size, mode, mean, std)")
    return Preprocessing(**opts)


def _guess_kind(path: Path) -> str:
    """`kind: imagenet` picks the layout from what the path is."""
    if path.is_file() and path.suffix == ".tar" or (path / VAL_TAR).is_file():
        return "imagenet-tar"
    if path.is_dir():
        return "imagefolder"
    if path.is_file():
        return "list"
    raise ValueError(f"path: no such file or folder {path}")


def open_dataset(spec: Any, base_dir: str | Path | None = None) -> Dataset:
    """Open the dataset a spec describes, restricted to a class-balanced subset when `limit` is set.

    Fields: kind (imagenet-tar | imagefolder | list | synthetic | imagenet = guess from path),
    path (the val tar or a folder holding it and the devkit; the ImageFolder root; the list file),
    devkit (default: ILSVRC2012_devkit_t12.tar.gz beside the tar), classes (ImageFolder class list
    file), limit, seed (shuffles within each class for the subset), count and num_classes
    (synthetic), preprocessing {size, mode: resize | resize-crop}, cache_dir (tar index cache).
    Relative paths resolve from base_dir (the job file's folder).
    """
    d = _as_dict(spec)
    kind = d.get("kind") or "synthetic"
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    prep = _preprocessing(d)
    limit = d.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit: must be a positive integer, got {limit!r}")
    seed = d.get("seed")
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def resolve(field: str) -> Path | None:
        v = d.get(field)
        if v is None:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else base / p

    if kind == "synthetic":
        count = d.get("count") or limit or 1000
        return Synthetic(int(count), prep, seed=int(seed or 0), classes=int(d.get("num_classes") or 1000))

    path = resolve("path")
    if path is None:
        raise ValueError(f"path: required for kind {kind}")
    if not path.exists():
        raise ValueError(f"path: no such file or folder {path}")
    if kind == "imagenet":
        kind = _guess_kind(path)

    ds: Dataset
    if kind == "imagenet-tar":
        tar = path / VAL_TAR if path.is_dir() else path
        devkit = resolve("devkit") or tar.parent / DEVKIT
        if not tar.is_file():
            raise ValueError(f"path: no {VAL_TAR} in {path}")
        if not devkit.is_file():
            raise ValueError(f"devkit: no such file {devkit}")
        ds = ImageNetValTar(tar, devkit, prep, cache_dir=resolve("cache_dir"))
    elif kind == "imagefolder":
        classes_file = resolve("classes")
        classes = read_class_list(classes_file) if classes_file else None
        ds = ImageFolder(path, prep, classes)
    else:
        if not path.is_file():
            raise ValueError(f"path: {path} is not a list file")
        ds = ListFile(path, prep)

    if limit is not None and limit < len(ds):
        ds = Subset(ds, balanced_indices(ds.labels(), limit, seed))
    return ds
