"""ILSVRC2012 validation set read in place from the original archives.

`ILSVRC2012_img_val.tar` (6.4 GB, 50,000 JPEGs) is never unpacked: its member offsets are
indexed once with tarfile and cached (keyed by the tar's path, size and mtime), then each
image is one os.pread. Labels come from the devkit: the ground-truth file gives an
ILSVRC2012_ID (1..1000) per image, and meta.mat maps those IDs to WNIDs. The devkit's IDs
are NOT in WNID order (ID 1 is n02119789, kit fox), so the standard 0-999 class index used
by google/vit-base-patch16-224 and torchvision is the WNID's position among the 1000 sorted
leaf WNIDs -- derived from meta.mat itself, so no WNID list has to be shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tarfile
from pathlib import Path
from typing import Any

from orchestrator.datasets import matv5
from orchestrator.datasets.base import Dataset, Preprocessing

VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
GT_SUFFIX = "data/ILSVRC2012_validation_ground_truth.txt"
META_SUFFIX = "data/meta.mat"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.JPEG$", re.IGNORECASE)
INDEX_VERSION = 1


def default_cache_dir() -> Path:
    """Where tar indexes go unless told: $EDGE_TESTBED_CACHE, else ~/.cache/edge-testbed."""
    env = os.environ.get("EDGE_TESTBED_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "edge-testbed"
    return base / "tar-index"


def _index_path(tar: Path, cache_dir: Path, st: os.stat_result) -> Path:
    key = hashlib.sha1(str(tar.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{tar.name}.{key}.{st.st_size}.{st.st_mtime_ns}.json"


def tar_index(tar: Path, cache_dir: Path | None = None, field: str = "path") -> list[tuple[str, int, int]]:
    """(member name, data offset, size) of every regular file in an uncompressed tar.

    Built once by walking the headers (tarfile seeks over the data, so this reads about
    one 512-byte block per member), then loaded from the cache while the tar's size and
    mtime are unchanged. A cache that cannot be written is not an error, only slower.
    """
    try:
        st = tar.stat()
    except OSError as e:
        raise ValueError(f"{field}: cannot read {tar} ({e.strerror})") from None
    cache_dir = cache_dir or default_cache_dir()
    cached = _index_path(tar, cache_dir, st)
    try:
        doc = json.loads(cached.read_text())
        if doc.get("version") == INDEX_VERSION and doc.get("size") == st.st_size:
            return [(str(n), int(o), int(s)) for n, o, s in doc["members"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    members: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(tar, mode="r:") as tf:  # "r:" refuses compressed tars: those cannot be pread
            for m in tf:
                if m.isfile():
                    members.append((m.name, m.offset_data, m.size))
            end = tf.offset  # where the walk stopped: must be the end-of-archive zero block
        with open(tar, "rb") as f:
            f.seek(end)
            tail = f.read(512)
        if len(tail) < 512 or tail.count(0) != 512:
            raise ValueError(f"{field}: {tar} is truncated or corrupt after {len(members)} files")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{field}: {tar} is not a readable uncompressed tar ({e})") from None
    for _, off, size in members:
        if off + size > st.st_size:
            raise ValueError(f"{field}: {tar} is truncated (a member runs past the end of the file)")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {
                    "version": INDEX_VERSION,
                    "tar": str(tar.resolve()),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "members": members,
                }
            )
        )
        os.replace(tmp, cached)
    except OSError:
        pass
    return members


def _read_meta(data: bytes, field: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID for the 1000 leaf classes (IDs 1..1000), from meta.mat bytes."""
    try:
        import io

        import scipy.io  # optional: the most robust reader when installed

        mat: Any = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
        import numpy as np

        rows = [(int(s.ILSVRC2012_ID), str(s.WNID)) for s in np.atleast_1d(mat["synsets"]).ravel()]
    except ImportError:
        try:
            mat = matv5.loadmat(data)
            rows = [(int(s["ILSVRC2012_ID"].ravel()[0]), str(s["WNID"])) for s in mat["synsets"]]
        except (ValueError, KeyError, TypeError, IndexError, struct.error) as e:
            raise ValueError(f"{field}: cannot read meta.mat ({e}); installing scipy may help") from None
    except Exception as e:  # scipy raises several types for a broken file
        raise ValueError(f"{field}: cannot read meta.mat ({e})") from None
    ids = {i: w for i, w in rows if 1 <= i <= 1000}
    if not ids:
        raise ValueError(f"{field}: meta.mat lists no synsets with ILSVRC2012_ID 1..1000")
    return ids


def read_devkit(devkit: Path, field: str = "devkit") -> tuple[list[int], dict[int, str]]:
    """(ground-truth ILSVRC2012_ID per val image in order, ID -> WNID) from the devkit tar.gz."""
    gt: bytes | None = None
    meta: bytes | None = None
    try:
        with tarfile.open(devkit, mode="r:*") as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(GT_SUFFIX):
                    gt = tf.extractfile(m).read()  # type: ignore[union-attr]
                elif m.isfile() and m.name.endswith(META_SUFFIX):
                    meta = tf.extractfile(m).read()  # type: ignore[union-attr]
                if gt is not None and meta is not None:
                    break
    except FileNotFoundError:
        raise ValueError(f"{field}: no such file {devkit}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{field}: {devkit} is not a readable devkit archive ({e})") from None
    if gt is None:
        raise ValueError(f"{field}: {devkit} has no {GT_SUFFIX}")
    if meta is None:
        raise ValueError(f"{field}: {devkit} has no {META_SUFFIX}")
    try:
        ids = [int(x) for x in gt.decode("ascii").split()]
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{field}: {GT_SUFFIX} is not one integer per line") from None
    return ids, _read_meta(meta, field)


class ImageNetValTar(Dataset):
    """ILSVRC2012 val images straight out of the original tar, with standard 0-999 labels."""

    def __init__(self, tar: Path, devkit: Path, prep: Preprocessing, cache_dir: Path | None = None) -> None:
        self.tar = Path(tar)
        self.prep = prep
        members = tar_index(self.tar, cache_dir, "path")
        gt, id_to_wnid = read_devkit(Path(devkit), "devkit")
        self.wnids = sorted(set(id_to_wnid.values()))
        pos = {w: k for k, w in enumerate(self.wnids)}
        images: list[tuple[int, str, int, int]] = []
        for name, off, size in members:
            m = _VAL_NAME.search(name)
            if m:
                images.append((int(m.group(1)), name, off, size))
        if not images:
            raise ValueError(f"path: {self.tar} holds no ILSVRC2012_val_*.JPEG images")
        images.sort()
        self._names: list[str] = []
        self._offsets: list[int] = []
        self._sizes: list[int] = []
        self._labels: list[int] = []
        for num, name, off, size in images:
            if not 1 <= num <= len(gt):
                raise ValueError(f"devkit: no ground truth for {name} (the file has {len(gt)} lines)")
            wnid = id_to_wnid.get(gt[num - 1])
            if wnid is None:
                raise ValueError(f"devkit: {name} has ILSVRC2012_ID {gt[num - 1]}, which meta.mat does not list")
            self._names.append(name)
            self._offsets.append(off)
            self._sizes.append(size)
            self._labels.append(pos[wnid])
        self._fd: int | None = None
        self._fd_pid = 0

    def __len__(self) -> int:
        return len(self._names)

    def label(self, i: int) -> int:
        return self._labels[self._check(i)]

    def name(self, i: int) -> str:
        return self._names[self._check(i)]

    def read(self, i: int) -> bytes:
        i = self._check(i)
        if self._fd is None or self._fd_pid != os.getpid():  # one descriptor per process; pread needs no lock
            try:
                self._fd = os.open(self.tar, os.O_RDONLY)
            except OSError as e:
                raise ValueError(f"path: cannot open {self.tar} ({e.strerror})") from None
            self._fd_pid = os.getpid()
        data = os.pread(self._fd, self._sizes[i], self._offsets[i])
        if len(data) != self._sizes[i]:
            raise ValueError(f"path: {self.tar} was truncated while reading {self._names[i]}")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None  # workers open their own descriptor
        return state

    def close(self) -> None:
        """Release the file descriptor (reopened on the next read)."""
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
