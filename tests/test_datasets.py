"""orchestrator.datasets: ImageNet val layouts read in place, labels, preprocessing, prefetch.

Fixtures are tiny archives built here: solid-colour JPEGs, one colour per class, so a
decoded image says which class it came from.
"""

from __future__ import annotations

import base64
import io
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.datasets import (
    Prefetcher,
    Preprocessing,
    Subset,
    balanced_indices,
    matv5,
    open_dataset,
)

# A meta.mat written by scipy.io.savemat (compressed MATLAB v5), so the devkit route is tested
# without scipy too. Its synsets: ID 1 n02119789 (kit fox), ID 2 n01440764 (tench),
# ID 3 n15075141 (toilet tissue), ID 1001 n00001740 (entity, not a leaf). As in the real
# devkit, ID order is not WNID order: class index = position among sorted WNIDs.
META_MAT = base64.b64decode(
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFN1biBOb3YgMjIgMTg6MDE6NDMgMjAyNgAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0PAAAAGQEAAHic42NgYFjBysDABqQ5"
    "gJiJAQJYoXxGIGaB0uxAXFyZV5xaUgyUZ2Hgg4q7AbGnT3BYkLORgaFRvKcLQ7gfkICD8vyilGI4L680Nz45IzMnpSg1j4EBwYIA"
    "kJkWDAj3sGFxDwyDACdUHAI+2IP0OyDpZ8GinxNJvwCUn2dgZGhoaW5hicMd2MxhRzMHxM/OLFFIy6+g0B8Q+w0I6GdA0095+DE4"
    "kB9+hiYmBuZmJiSEHyuaOSB+SWpecgbl/hig8OMgP/wMTQ3MTQ1NDJHcQcgcXjRzQPyS/Myc1BKFkszi4tLUoRqOHv0UpEMgMDQ3"
    "McDhDmzmsKGZA+Kn5pVkllRSJz14ENDPjKZfAq7/gz2U4QAzDwBmUTc2"
)
ID_WNID = {1: "n02119789", 2: "n01440764", 3: "n15075141"}
WNID_CLASS = {w: k for k, w in enumerate(sorted(ID_WNID.values()))}  # tench 0, kit fox 1, toilet tissue 2
COLOURS = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200)}  # by class index
# ground-truth ILSVRC2012_ID per val image (image k+1 is line k)
GT_IDS = [1, 2, 3, 1, 1, 2, 3, 2]


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, colour).save(b, format="JPEG", quality=95)
    return b.getvalue()


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_imagenet(root: Path, meta: bytes = META_MAT, gt: list[int] = GT_IDS) -> tuple[Path, Path]:
    """ILSVRC2012_img_val.tar + ILSVRC2012_devkit_t12.tar.gz in root; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    val = root / "ILSVRC2012_img_val.tar"
    with tarfile.open(val, "w") as tf:
        for k in reversed(range(len(gt))):  # out of order on purpose: the name gives the position
            add_bytes(tf, f"ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg(COLOURS[WNID_CLASS[ID_WNID[gt[k]]]]))
    devkit = root / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as tf:
        add_bytes(
            tf,
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "".join(f"{i}\n" for i in gt).encode(),
        )
        add_bytes(tf, "ILSVRC2012_devkit_t12/data/meta.mat", meta)
        add_bytes(tf, "ILSVRC2012_devkit_t12/readme.txt", b"fixture\n")
    return val, devkit


def expected_labels() -> list[int]:
    return [WNID_CLASS[ID_WNID[i]] for i in GT_IDS]


def colour_of(x: np.ndarray) -> int:
    """Class whose colour a preprocessed image shows."""
    rgb = (x.reshape(3, -1).mean(axis=1) * 0.5 + 0.5) * 255
    return min(COLOURS, key=lambda c: float(np.abs(rgb - np.array(COLOURS[c])).sum()))


def tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


# --- ILSVRC2012 tars ---------------------------------------------------------------------------


def test_imagenet_tar_pairs_and_read_in_place(tmp_path: Path) -> None:
    val, _ = make_imagenet(tmp_path / "data")
    cache = tmp_path / "cache"
    before = tree(tmp_path / "data")
    ds = open_dataset({"kind": "imagenet-tar", "path": str(val), "cache_dir": str(cache)})
    assert len(ds) == len(GT_IDS)
    assert [ds.label(i) for i in range(len(ds))] == expected_labels()
    for i in range(len(ds)):
        x = ds.load(i)
        assert colour_of(x) == ds.label(i)
    assert ds.name(0) == "ILSVRC2012_val_00000001.JPEG"
    # nothing extracted: the data folder is unchanged, the only new file is the index cache
    assert tree(tmp_path / "data") == before
    assert [p.suffix for p in cache.rglob("*") if p.is_file()] == [".json"]


def test_tar_index_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    val, _ = make_imagenet(tmp_path / "data")
    spec = {"kind": "imagenet-tar", "path": str(tmp_path / "data"), "cache_dir": str(tmp_path / "c")}
    open_dataset(spec)
    real_open = tarfile.open

    def no_walk(name: object, mode: str = "r", *a: object, **k: object) -> tarfile.TarFile:
        assert mode != "r:", "the val tar was walked again despite a cached index"
        return real_open(name, mode, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile, "open", no_walk)
    ds = open_dataset(spec)
    assert [ds.label(i) for i in range(len(ds))] == expected_labels()


def test_meta_mat_without_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in MATLAB v5 reader gives the same labels when scipy is missing."""
    make_imagenet(tmp_path / "data")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    ds = open_dataset({"kind": "imagenet-tar", "path": str(tmp_path / "data"), "cache_dir": str(tmp_path / "c")})
    assert [ds.label(i) for i in range(len(ds))] == expected_labels()


@pytest.mark.parametrize("compress", [True, False])
def test_matv5_matches_scipy(compress: bool) -> None:
    sio = pytest.importorskip("scipy.io")
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("children", "O")]
    arr = np.zeros((1, 3), dtype=dt)
    arr[0, 0] = (np.array([[7.0]]), "n01440764", "tench, Tinca tinca", np.zeros((1, 0)))
    arr[0, 1] = (np.array([[1.0]]), "n02119789", "kit fox", np.zeros((1, 0)))
    arr[0, 2] = (np.array([[1001.0]]), "n00001740", "entity", np.array([[1.0, 7.0]]))
    b = io.BytesIO()
    sio.savemat(
        b, {"synsets": arr, "m": np.arange(6.0).reshape(2, 3), "c": np.array(["ab", "cd"])}, do_compression=compress
    )
    got = matv5.loadmat(b.getvalue())
    ref = sio.loadmat(io.BytesIO(b.getvalue()), squeeze_me=True, struct_as_record=False)
    assert [(int(s["ILSVRC2012_ID"].ravel()[0]), s["WNID"], s["words"]) for s in got["synsets"]] == [
        (int(s.ILSVRC2012_ID), s.WNID, s.words) for s in ref["synsets"]
    ]
    np.testing.assert_array_equal(got["m"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(got["synsets"][2]["children"].ravel(), [1.0, 7.0])
    assert got["c"] == ["ab", "cd"]


def test_guess_kind_and_relative_paths(tmp_path: Path) -> None:
    make_imagenet(tmp_path / "data")
    ds = open_dataset({"kind": "imagenet", "path": "data", "cache_dir": "c"}, base_dir=tmp_path)
    assert [ds.label(i) for i in range(len(ds))] == expected_labels()
    assert (tmp_path / "c").is_dir()


# --- ImageFolder and list files ------------------------------------------------------------------


def make_folder(root: Path, per_class: dict[str, int]) -> None:
    for k, (wnid, n) in enumerate(sorted(per_class.items())):
        (root / wnid).mkdir(parents=True)
        for j in range(n):
            (root / wnid / f"img_{j}.JPEG").write_bytes(jpeg(COLOURS[k]))


def test_imagefolder(tmp_path: Path) -> None:
    make_folder(tmp_path / "val", {"n02119789": 2, "n01440764": 3, "n15075141": 1})
    (tmp_path / "val" / "n01440764" / "notes.txt").write_text("not an image")
    ds = open_dataset({"kind": "imagefolder", "path": str(tmp_path / "val")})
    assert [ds.label(i) for i in range(len(ds))] == [0, 0, 0, 1, 1, 2]
    assert all(colour_of(ds.load(i)) == ds.label(i) for i in range(len(ds)))


def test_imagefolder_with_class_list(tmp_path: Path) -> None:
    make_folder(tmp_path / "val", {"n02119789": 1, "n15075141": 1})
    wnids = tmp_path / "wnids.txt"
    wnids.write_text("n01440764\nn02119789\nn09999999\nn15075141\n")
    ds = open_dataset({"kind": "imagefolder", "path": str(tmp_path / "val"), "classes": str(wnids)})
    assert [ds.label(i) for i in range(len(ds))] == [1, 3]


def test_list_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    lines = []
    for j, c in enumerate([2, 0, 1, 2]):
        (tmp_path / "imgs" / f"a {j}.jpg").write_bytes(jpeg(COLOURS[c]))
        lines.append(f"imgs/a {j}.jpg {c}")
    (tmp_path / "val.txt").write_text("# path label\n" + "\n".join(lines) + "\n\n")
    ds = open_dataset({"kind": "list", "path": str(tmp_path / "val.txt")})
    assert [ds.label(i) for i in range(len(ds))] == [2, 0, 1, 2]
    assert [colour_of(ds.load(i)) for i in range(len(ds))] == [2, 0, 1, 2]


# --- balanced subsets ----------------------------------------------------------------------------


def test_balanced_subset_one_per_class(tmp_path: Path) -> None:
    val, _ = make_imagenet(tmp_path / "data")
    ds = open_dataset({"kind": "imagenet-tar", "path": str(val), "cache_dir": str(tmp_path / "c"), "limit": 3})
    assert isinstance(ds, Subset)
    assert sorted(ds.label(i) for i in range(len(ds))) == [0, 1, 2]
    again = open_dataset({"kind": "imagenet-tar", "path": str(val), "cache_dir": str(tmp_path / "c"), "limit": 3})
    assert list(again.indices) == list(ds.indices)  # type: ignore[attr-defined]


def test_balanced_indices_round_robin() -> None:
    labels = [5] * 10 + [1] * 2 + [3] * 4  # the first files are all one class
    idx = balanced_indices(labels, 7)
    assert [labels[i] for i in idx] == [1, 3, 5, 1, 3, 5, 3]
    assert idx == [10, 12, 0, 11, 13, 1, 14]
    assert len(set(balanced_indices(labels, 100))) == len(labels)
    shuffled = balanced_indices(labels, 3, seed=1)
    assert sorted(labels[i] for i in shuffled) == [1, 3, 5]
    assert shuffled == balanced_indices(labels, 3, seed=1)
    # 1000 classes x 50 images in val order: limit 1000 is exactly one per class
    big = np.random.default_rng(0).permutation(np.repeat(np.arange(1000), 50))
    assert sorted(big[balanced_indices(big, 1000)].tolist()) == list(range(1000))


# --- preprocessing -------------------------------------------------------------------------------


def test_preprocessing_matches_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grad = np.linspace(0, 255, 160)[None, :, None] * np.ones((120, 1, 3))
    arr = np.clip(grad + rng.normal(0, 40, grad.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "x.png"  # lossless, so the reference sees the very same pixels
    Image.fromarray(arr).save(path)
    (tmp_path / "l.txt").write_text("x.png 0\n")
    x = open_dataset({"kind": "list", "path": str(tmp_path / "l.txt")}).load(0)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x.min() >= -1.0 and x.max() <= 1.0
    ref = np.asarray(Image.fromarray(arr).resize((224, 224), resample=2), dtype=np.float64)  # 2 = BILINEAR
    ref = (ref / 127.5 - 1.0).transpose(2, 0, 1)
    np.testing.assert_allclose(x, ref, atol=1e-6)


def test_preprocessing_resize_crop_and_modes(tmp_path: Path) -> None:
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 40, 200))  # a blue band on the left, cropped away by center-crop
    img.convert("L").save(tmp_path / "g.png")  # grayscale input is converted to RGB
    img.save(tmp_path / "c.png")
    (tmp_path / "l.txt").write_text("c.png 0\ng.png 1\n")
    ds = open_dataset(
        {"kind": "list", "path": str(tmp_path / "l.txt"), "preprocessing": {"size": 64, "mode": "resize-crop"}}
    )
    x = ds.load(0)
    assert x.shape == (3, 64, 64)
    np.testing.assert_allclose(x[:, 32, 0], [1.0, -1.0, -1.0], atol=1e-6)  # red at the left edge
    assert ds.load(1).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="preprocessing.mode"):
        Preprocessing(mode="stretch")


def test_synthetic() -> None:
    ds = open_dataset({"kind": "synthetic", "limit": 5, "seed": 3})
    assert len(ds) == 5 and ds.label(4) == 4
    x = ds.load(2)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_array_equal(x, open_dataset({"kind": "synthetic", "seed": 3}).load(2))


# --- prefetcher ----------------------------------------------------------------------------------


def test_prefetcher_in_order_threads(tmp_path: Path) -> None:
    val, _ = make_imagenet(tmp_path / "data")
    ds = open_dataset({"kind": "imagenet-tar", "path": str(val), "cache_dir": str(tmp_path / "c")})
    order = [7, 0, 3, 5, 1, 6, 2, 4]
    with Prefetcher(ds, order, batch=3, workers=2, depth=2) as pf:
        assert len(pf) == 3
        got = list(pf)
    assert [x.shape for x, _ in got] == [(3, 3, 224, 224), (3, 3, 224, 224), (2, 3, 224, 224)]
    labels = np.concatenate([y for _, y in got])
    assert labels.tolist() == [ds.label(i) for i in order]
    images = np.concatenate([x for x, _ in got])
    for k, i in enumerate(order):
        np.testing.assert_array_equal(images[k], ds.load(i))
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]


def test_prefetcher_processes(tmp_path: Path) -> None:
    val, _ = make_imagenet(tmp_path / "data")
    ds = open_dataset({"kind": "imagenet-tar", "path": str(val), "cache_dir": str(tmp_path / "c"), "limit": 5})
    with Prefetcher(ds, batch=2, workers=2, depth=2, mode="process") as pf:
        labels = np.concatenate([y for _, y in pf])
    assert labels.tolist() == [ds.label(i) for i in range(len(ds))]


def test_prefetcher_stops_early_and_inline() -> None:
    ds = open_dataset({"kind": "synthetic", "count": 50, "preprocessing": {"size": 8}})
    pf = Prefetcher(ds, batch=2, workers=2, depth=3)
    it = iter(pf)
    x, y = next(it)
    assert x.shape == (2, 3, 8, 8) and y.tolist() == [0, 1]
    pf.close()
    assert list(it) == []
    pf.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("prefetch")]
    assert sum(len(y) for _, y in Prefetcher(ds, range(5), batch=2, workers=0)) == 5


def test_prefetcher_reports_a_broken_image(tmp_path: Path) -> None:
    (tmp_path / "ok.jpg").write_bytes(jpeg(COLOURS[0]))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "l.txt").write_text("ok.jpg 0\nbad.jpg 1\nok.jpg 0\n")
    ds = open_dataset({"kind": "list", "path": str(tmp_path / "l.txt")})
    with Prefetcher(ds, batch=1, workers=2) as pf, pytest.raises(ValueError, match="bad.jpg: cannot decode"):
        list(pf)


# --- bad input -----------------------------------------------------------------------------------


def test_bad_inputs(tmp_path: Path) -> None:
    def err(spec: dict[str, object]) -> str:
        with pytest.raises(ValueError) as e:
            open_dataset({"cache_dir": str(tmp_path / "c"), **spec})
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert err({"kind": "imagenet-tar", "path": str(tmp_path / "nope.tar")}).startswith("path: no such")
    assert err({"kind": "mnist", "path": "x"}).startswith("kind:")
    assert err({"kind": "list", "path": str(tmp_path), "colour": 1}).startswith("colour: unknown")
    assert err({"kind": "list"}).startswith("path: required")
    assert err({"kind": "synthetic", "limit": 0}).startswith("limit:")

    data = tmp_path / "d"
    val, devkit = make_imagenet(data)
    assert "not a readable uncompressed tar" in err(
        {"kind": "imagenet-tar", "path": str(devkit), "devkit": str(devkit)}
    )
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x01" * 3000)
    assert err({"kind": "imagenet-tar", "path": str(junk), "devkit": str(devkit)}).startswith("path:")
    cut = tmp_path / "cut" / "ILSVRC2012_img_val.tar"
    cut.parent.mkdir()
    cut.write_bytes(val.read_bytes()[:2000])
    assert err({"kind": "imagenet-tar", "path": str(cut), "devkit": str(devkit)}).startswith("path:")

    assert err({"kind": "imagenet-tar", "path": str(val), "devkit": str(tmp_path / "x.tar.gz")}).startswith(
        "devkit: no such file"
    )
    bad_meta = make_imagenet(tmp_path / "m", meta=b"MATLAB" + b"\0" * 200)[0]
    assert err({"kind": "imagenet-tar", "path": str(bad_meta)}).startswith("devkit: cannot read meta.mat")
    short_gt = make_imagenet(tmp_path / "g", gt=GT_IDS)[0]
    with tarfile.open(short_gt.parent / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        add_bytes(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", b"1\n2\n")
        add_bytes(tf, "ILSVRC2012_devkit_t12/data/meta.mat", META_MAT)
    assert "no ground truth for ILSVRC2012_val_00000003.JPEG" in err({"kind": "imagenet-tar", "path": str(short_gt)})

    (tmp_path / "empty").mkdir()
    assert err({"kind": "imagefolder", "path": str(tmp_path / "empty")}).startswith("path:")
    (tmp_path / "l.txt").write_text("a.jpg zebra\n")
    assert "line 1" in err({"kind": "list", "path": str(tmp_path / "l.txt")})
    (tmp_path / "l2.txt").write_text("missing.jpg 3\n")
    assert "no such image" in err({"kind": "list", "path": str(tmp_path / "l2.txt")})
