"""Images as loose files: an ImageFolder tree or a `path label` list, plus synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.datasets.base import Dataset, Preprocessing

IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


class _Files(Dataset):
    """Images read from paths; subclasses fill in the paths and labels."""

    def __init__(self, paths: list[Path], labels: list[int], prep: Preprocessing) -> None:
        self.paths = paths
        self._labels = labels
        self.prep = prep

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, i: int) -> int:
        return self._labels[self._check(i)]

    def name(self, i: int) -> str:
        return str(self.paths[self._check(i)])

    def read(self, i: int) -> bytes:
        p = self.paths[self._check(i)]
        try:
            return p.read_bytes()
        except OSError as e:
            raise ValueError(f"path: cannot read {p} ({e.strerror})") from None


def read_class_list(path: Path, field: str = "classes") -> list[str]:
    """Class names (WNIDs) one per line, in class-index order; blank lines and # comments skipped."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{field}: cannot read {path} ({e.strerror})") from None
    names = [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"{field}: {path} lists no classes")
    if len(set(names)) != len(names):
        raise ValueError(f"{field}: {path} lists a class twice")
    return names


class ImageFolder(_Files):
    """`root/<class>/*.JPEG`. Class index = position of the folder name in `classes` when given,
    else among the sorted folder names (the standard ImageNet order when all 1000 WNIDs are there)."""

    def __init__(self, root: Path, prep: Preprocessing, classes: list[str] | None = None) -> None:
        if not root.is_dir():
            raise ValueError(f"path: {root} is not a folder")
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise ValueError(f"path: {root} has no class folders (expected {root}/<wnid>/*.JPEG)")
        if classes is None:
            classes = folders
        else:
            unknown = sorted(set(folders) - set(classes))
            if unknown:
                raise ValueError(f"classes: folder {unknown[0]!r} in {root} is not in the class list")
        pos = {c: k for k, c in enumerate(classes)}
        paths: list[Path] = []
        labels: list[int] = []
        for f in folders:
            for p in sorted((root / f).iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                    paths.append(p)
                    labels.append(pos[f])
        if not paths:
            raise ValueError(f"path: no images under {root}")
        self.classes = classes
        super().__init__(paths, labels, prep)


class ListFile(_Files):
    """A text file of `path label` lines; relative paths are relative to the list's folder."""

    def __init__(self, listfile: Path, prep: Preprocessing) -> None:
        try:
            text = listfile.read_text()
        except OSError as e:
            raise ValueError(f"path: cannot read {listfile} ({e.strerror})") from None
        paths: list[Path] = []
        labels: list[int] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)  # paths may contain spaces; the label never does
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise ValueError(f"path: {listfile} line {n}: expected 'path label' with an integer label >= 0")
            p = Path(parts[0])
            p = p if p.is_absolute() else listfile.parent / p
            if not p.is_file():
                raise ValueError(f"path: {listfile} line {n}: no such image {p}")
            paths.append(p)
            labels.append(int(parts[1]))
        if not paths:
            raise ValueError(f"path: {listfile} lists no images")
        super().__init__(paths, labels, prep)


class Synthetic(Dataset):
    """Seeded random inputs in [-1, 1] with labels i % classes: no files, for demos and tests."""

    def __init__(self, count: int, prep: Preprocessing, seed: int = 0, classes: int = 1000) -> None:
        self.count = count
        self.seed = seed
        self.classes = classes
        self.prep = prep

    def __len__(self) -> int:
        return self.count

    def label(self, i: int) -> int:
        return self._check(i) % self.classes

    def read(self, i: int) -> bytes:
        raise ValueError("synthetic images have no encoded bytes")

    def load(self, i: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self._check(i)))
        s = self.prep.size
        return rng.uniform(-1.0, 1.0, size=(3, s, s)).astype(np.float32)
