"""Dataset interface, ViT preprocessing and the class-balanced subset.

Every layout (tar, folder, list, synthetic) only has to say how many images there
are, what an image's label is and how to get its encoded bytes; decoding and the
HF ViTImageProcessor-equivalent preprocessing live here once, so all layouts feed
the model identically.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# torchvision-style "resize-crop" scales the short side to size / CROP_PCT first (224 -> 256).
CROP_PCT = 0.875
MODES = ("resize", "resize-crop")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input.

    The default is google/vit-base-patch16-224's ViTImageProcessor: resize straight to
    224x224 with PIL bilinear, rescale by 1/255, normalize with mean 0.5 and std 0.5
    (so values land in [-1, 1]), float32 CHW.
    """

    size: int = 224
    mode: str = "resize"  # "resize" (HF ViT) or "resize-crop" (short side to size/0.875, center crop)
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocessing.mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.size <= 0:
            raise ValueError(f"preprocessing.size: must be positive, got {self.size}")
        if self.std <= 0:
            raise ValueError(f"preprocessing.std: must be positive, got {self.std}")


def resize_image(img: Image.Image, prep: Preprocessing) -> Image.Image:
    """Geometric part of preprocessing: RGB, then resize (and center-crop) to size x size."""
    if img.mode != "RGB":  # grayscale and CMYK JPEGs exist in ImageNet val
        img = img.convert("RGB")
    s = prep.size
    if prep.mode == "resize":
        return img.resize((s, s), Image.Resampling.BILINEAR)
    short = int(round(s / CROP_PCT))
    w, h = img.size
    if w <= h:
        nw, nh = short, max(short, int(round(h * short / w)))
    else:
        nw, nh = max(short, int(round(w * short / h))), short
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - s) // 2, (nh - s) // 2
    return img.crop((left, top, left + s, top + s))


def to_tensor(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Photometric part: HWC uint8 -> CHW float32, rescale then normalize the way HF does
    (rescale in float64 then cast, normalize in float32) so results match to the last bit."""
    a = (np.asarray(img, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)
    a = (a - np.float32(prep.mean)) / np.float32(prep.std)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def decode(data: bytes, what: str = "image") -> Image.Image:
    """Decode encoded image bytes; a broken file is a ValueError naming it."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what}: cannot decode image ({e})") from None
    return img


def preprocess(data: bytes, prep: Preprocessing, what: str = "image") -> np.ndarray:
    """Encoded bytes -> float32 [3, size, size] model input."""
    return to_tensor(resize_image(decode(data, what), prep), prep)


class Dataset(ABC):
    """Indexable images with labels (standard ImageNet 0-999 class indices where known)."""

    prep: Preprocessing

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def label(self, i: int) -> int:
        """Class index of image i."""

    @abstractmethod
    def read(self, i: int) -> bytes:
        """Encoded bytes of image i (no decoding: cheap, and what workers parallelise over)."""

    def name(self, i: int) -> str:
        """A human-readable name of image i for error messages and reports."""
        return f"#{i}"

    def load(self, i: int) -> np.ndarray:
        """Image i as a float32 [3, size, size] model input."""
        return preprocess(self.read(i), self.prep, self.name(i))

    def labels(self) -> np.ndarray:
        """All labels, in index order."""
        return np.fromiter((self.label(i) for i in range(len(self))), dtype=np.int64, count=len(self))

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        return i % n


class Subset(Dataset):
    """A view of some images of another dataset, in a given order."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.prep = base.prep

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, i: int) -> int:
        return self.base.label(int(self.indices[self._check(i)]))

    def read(self, i: int) -> bytes:
        return self.base.read(int(self.indices[self._check(i)]))

    def name(self, i: int) -> str:
        return self.base.name(int(self.indices[self._check(i)]))

    def load(self, i: int) -> np.ndarray:
        return self.base.load(int(self.indices[self._check(i)]))


def balanced_indices(labels: Sequence[int] | np.ndarray, limit: int, seed: int | None = None) -> list[int]:
    """Indices of `limit` images taken round-robin over classes (ascending class order).

    With 1000 classes, limit=1000 gives one image per class instead of the first 1000
    files (which in ImageNet val order would be a biased mix). Within a class images are
    taken in index order, or in a seeded shuffled order when `seed` is given; the result
    is deterministic. Every prefix of the result is as balanced as it can be.
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed) if seed is not None else None
    per_class: list[np.ndarray] = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if rng is not None:
            idx = rng.permutation(idx)
        per_class.append(idx)
    out: list[int] = []
    depth = 0
    limit = min(limit, len(labels))
    while len(out) < limit:
        for idx in per_class:
            if depth < len(idx):
                out.append(int(idx[depth]))
                if len(out) == limit:
                    break
        depth += 1
    return out
