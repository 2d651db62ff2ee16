"""Weights stored once: plans hard-link the store's file, a stored model is cut without reading
its weights, run folders stay self-contained, and runs add kilobytes, not a copy of the model."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import pytest

from orchestrator import config
from orchestrator.config import Device
from orchestrator.models import build_vit
from orchestrator.partition import WEIGHTS_FILE, ModelGraph, WeightsStore, analysis_file, partition
from orchestrator.partition import weights_store as weights_store_module
from orchestrator.partition.graph import analyse
from orchestrator.partition.verify import verify_plan
from orchestrator.partition.weights_store import ANALYSIS_FILE, STORE_ENV
from orchestrator.run import execute

SMALL = dict(image_size=32, patch=8, layers=4, hidden=64, heads=4, mlp=128, classes=10)
# about 8 MB of weights: a copy per run would show in the disk figures
MEDIUM = dict(image_size=32, patch=8, layers=4, hidden=256, heads=4, mlp=512, classes=10)


def make_testbed(n: int = 3) -> config.Testbed:
    return config.Testbed(devices=[Device(name=f"d{i}", memory="1GiB") for i in range(n)], source="devices.yaml")


def disk_bytes(*roots: Path) -> int:
    """Bytes allocated under these folders, each inode once (what `du` counts)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                st = os.lstat(Path(folder) / name)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def stored_weights(store: Path) -> list[Path]:
    return sorted(store.glob(f"*/{WEIGHTS_FILE}"))


def aged(path: Path) -> Path:
    """The file as if written a minute ago: a file changed within the last seconds is hashed again."""
    t = time.time() - 60
    os.utime(path, (t, t))
    return path


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return aged(build_vit(tmp_path_factory.mktemp("vit") / "small_vit.onnx", **SMALL))


def test_plans_link_one_stored_copy(small_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = WeightsStore(tmp_path / "store")
    first = partition(small_vit, make_testbed(), out_dir=tmp_path / "a", store=store)
    (entry,) = stored_weights(tmp_path / "store")
    assert entry.parent.name == first.model_sha256 == hashlib.sha256(small_vit.read_bytes()).hexdigest()
    assert os.path.samefile(tmp_path / "a" / WEIGHTS_FILE, entry)
    stat = entry.stat()

    # stored: the model file is neither parsed nor hashed again, no weight byte is written
    def refuse(*_a, **_k):
        raise AssertionError("the stored model was read again")

    monkeypatch.setattr(weights_store_module, "load_graph", refuse)
    monkeypatch.setattr(weights_store_module, "_file_sha256", refuse)
    for i in range(3):
        again = partition(small_vit, make_testbed(), out_dir=tmp_path / f"b{i}", store=WeightsStore(tmp_path / "store"))
        assert again.stages == first.stages and again.model_sha256 == first.model_sha256
        assert os.path.samefile(tmp_path / f"b{i}" / WEIGHTS_FILE, entry)
        assert verify_plan(tmp_path / f"b{i}", batch=2).ok
    assert stored_weights(tmp_path / "store") == [entry]
    assert entry.stat().st_nlink == 5 and entry.stat().st_mtime_ns == stat.st_mtime_ns
    assert not entry.stat().st_mode & 0o222  # shared by every plan: nobody writes it in place

    # cutting into an existing plan folder replaces its files, the stored weights stay as they are
    partition(small_vit, make_testbed(2), out_dir=tmp_path / "a", store=store)
    assert verify_plan(tmp_path / "a", batch=2).ok and entry.stat().st_nlink == 5


def test_a_stored_model_is_analysed_once(small_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    first = partition(small_vit, make_testbed(), out_dir=tmp_path / "a", store=WeightsStore(store))
    (entry,) = stored_weights(store)
    analysis = entry.parent / ANALYSIS_FILE
    assert not analysis.exists()  # the first cut analyses the model file itself
    fresh = WeightsStore(store).graph(small_vit)  # the stored graph analysed, and its analysis kept
    assert analysis.exists()

    def refuse(*_a, **_k):
        raise AssertionError("the stored model was analysed again")

    with monkeypatch.context() as m:
        m.setattr(weights_store_module, "analyse", refuse)
        kept = WeightsStore(store).graph(small_vit)
        again = partition(small_vit, make_testbed(), out_dir=tmp_path / "b", store=WeightsStore(store))
    for f in dataclasses.fields(ModelGraph):  # read back as analysed, to the type
        assert getattr(kept, f.name) == getattr(fresh, f.name), f.name
        assert type(getattr(kept, f.name)) is type(getattr(fresh, f.name)), f.name
    assert again.stages == first.stages and again.predicted == first.predicted
    assert verify_plan(tmp_path / "b", batch=2).ok


@pytest.mark.parametrize("spoil", ["other code", "damaged file"])
def test_an_analysis_not_for_this_code_is_made_again(
    spoil: str, small_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    partition(small_vit, make_testbed(), out_dir=tmp_path / "a", store=WeightsStore(store))
    fresh = WeightsStore(store).graph(small_vit)
    if spoil == "other code":
        monkeypatch.setattr(analysis_file, "analysis_version", lambda: "other code")
    else:
        (store / fresh.sha256 / ANALYSIS_FILE).write_text("{not json")
    calls: list[Path] = []

    def counted(model: onnx.ModelProto, path: Path, sha256: str) -> ModelGraph:
        calls.append(path)
        return analyse(model, path, sha256)

    monkeypatch.setattr(weights_store_module, "analyse", counted)
    for _ in range(2):  # analysed again once, its analysis kept and read from then on
        assert WeightsStore(store).graph(small_vit).live_bytes == fresh.live_bytes
    assert len(calls) == 1


def test_a_changed_model_is_stored_again(tmp_path: Path) -> None:
    model = aged(build_vit(tmp_path / "m.onnx", **SMALL, seed=1))
    store = WeightsStore(tmp_path / "store")
    one = partition(model, make_testbed(), out_dir=tmp_path / "one", store=store)
    build_vit(model, **SMALL, seed=2)  # same path, same size, other weights
    two = partition(model, make_testbed(), out_dir=tmp_path / "two", store=WeightsStore(tmp_path / "store"))
    assert one.model_sha256 != two.model_sha256
    assert len(stored_weights(tmp_path / "store")) == 2
    assert verify_plan(tmp_path / "two", batch=2).ok


def test_external_data_is_part_of_the_key(small_vit: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(small_vit))
    path = src / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=1024)
    store = WeightsStore(tmp_path / "store")
    one = partition(path, make_testbed(), out_dir=tmp_path / "one", store=store)
    # the same graph file over other weights: another entry, not the first one's weights
    model = onnx.load(str(small_vit))
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) > 1024:
            t.raw_data = bytes(len(t.raw_data))
    (src / "ext.onnx.data").unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=1024)
    two = partition(path, make_testbed(), out_dir=tmp_path / "two", store=WeightsStore(tmp_path / "store"))
    assert one.model_sha256 == two.model_sha256  # plan.json's figure is the graph file's
    assert len(stored_weights(tmp_path / "store")) == 2
    assert verify_plan(tmp_path / "two", batch=2).ok


def test_run_folder_is_self_contained(small_vit: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    partition(small_vit, make_testbed(), out_dir=tmp_path / "run", store=WeightsStore(store))
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere" / "run")
    shutil.rmtree(store)
    for plan in (tmp_path / "elsewhere" / "run" / "plan.json", tmp_path / "run" / "plan.json"):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "verify", "--plan", str(plan)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK" in done.stdout


def test_concurrent_cuts_store_one_copy(small_vit: Path, tmp_path: Path) -> None:
    def cut(i: int):
        return partition(small_vit, make_testbed(), out_dir=tmp_path / f"p{i}", store=WeightsStore(tmp_path / "store"))

    with cf.ThreadPoolExecutor(4) as pool:
        plans = list(pool.map(cut, range(4)))
    (entry,) = stored_weights(tmp_path / "store")
    assert not [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".")]  # no temporary left
    for i, p in enumerate(plans):
        assert os.path.samefile(tmp_path / f"p{i}" / WEIGHTS_FILE, entry)
        assert verify_plan(p.dir, batch=2).ok


def test_a_broken_entry_is_written_again(small_vit: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    partition(small_vit, make_testbed(), out_dir=tmp_path / "a", store=WeightsStore(store))
    (entry,) = stored_weights(store)
    (tmp_path / "a" / WEIGHTS_FILE).unlink()
    entry.unlink()
    entry.write_bytes(b"cut short")
    partition(small_vit, make_testbed(), out_dir=tmp_path / "b", store=WeightsStore(store))
    (fresh,) = stored_weights(store)
    assert fresh.stat().st_size > 1000 and os.path.samefile(tmp_path / "b" / WEIGHTS_FILE, fresh)
    assert verify_plan(tmp_path / "b", batch=2).ok


def test_another_file_system_copies_and_says_so(small_vit: Path, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to put the store on")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        plan = partition(small_vit, make_testbed(), out_dir=tmp_path / "p", store=WeightsStore(other))
        (entry,) = stored_weights(Path(other))
        copied = tmp_path / "p" / WEIGHTS_FILE
        assert not os.path.samefile(copied, entry) and copied.read_bytes() == entry.read_bytes()
        assert any("weights copied" in n and STORE_ENV in n for n in plan.notes), plan.notes
    assert verify_plan(tmp_path / "p", batch=2).ok


def test_two_runs_add_kilobytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two local runs of one model: the disk holds one copy of its weights and little beside."""
    store, runs = tmp_path / "store", tmp_path / "runs"
    monkeypatch.setenv(STORE_ENV, str(store))
    model = build_vit(tmp_path / "medium_vit.onnx", **MEDIUM)
    (tmp_path / "devices.yaml").write_text(
        "devices:\n  - {name: a, cpus: 1, memory: 1GiB}\n  - {name: b, cpus: 1, memory: 1GiB}\n"
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "name": "disk",
                "model": str(model),
                "devices": "devices.yaml",
                "runtime": "local",
                "requests": 4,
                "warmup": 1,
                "agreement": 2,
                "measure_stages": False,
            }
        )
    )
    for i in range(2):
        _, rep = execute(str(job), out=str(runs / f"run{i}"))
        assert rep["errors"] == 0
    (entry,) = stored_weights(store)
    weights = entry.stat().st_size
    added = disk_bytes(store, runs) - weights
    print(f"two runs: {added / 1e6:.2f} MB on disk beyond the stored weights ({weights / 1e6:.1f} MB)")
    assert weights > 6e6
    assert added < 5e6
    for i in range(2):
        assert os.path.samefile(runs / f"run{i}" / WEIGHTS_FILE, entry)
