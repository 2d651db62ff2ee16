"""The profile cache: JSON files under `cache_dir`, one per (model sha256, block bounds, device spec,
runtime kind, batch, and for a decoder the past length of the decode step measured). A second
profile is a file read, changing one device re-profiles that device only, and identical devices
share one entry's measurements.

Beside them, `models.json` memoises each model file's facts by path, size and mtime, so a cached
profile is found without reading the model; and `blocks.json` in a blocks folder says which model
and bounds the block files there were written for.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from orchestrator.config import Device, Testbed
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.stage_files import StageFile, write_stages
from orchestrator.partition.weights_store import WEIGHTS_FILE
from orchestrator.profiling.decode_point import decode_point
from orchestrator.profiling.results import DeviceProfile, ModelFacts, Profile, assemble

# 2: per-block times from chunk totals; 3: per-frame node overhead; 4: overhead at saturation, round trip;
# 5: the CPU quota period measured under
CACHE_VERSION = 5
DEFAULT_CACHE_DIR = Path(".cache/profiles")
BLOCKS_MARK = "blocks.json"  # in blocks_dir: which model and bounds the block files hold
MODELS_INDEX = "models.json"  # in cache_dir: path/size/mtime -> sha256 and block facts

_index_lock = threading.Lock()


def device_spec(dev: Device) -> dict:
    """The parts of a device that change its measured costs (its name does not)."""
    return {
        "cpus": dev.cpus,
        "memory": dev.memory,
        "gpu": dev.gpu.model_dump() if dev.gpu is not None else None,
        "type": dev.type,
        "cpuset": dev.cpuset,
    }


def cache_key(
    sha256: str, dev: Device, bounds: Sequence[int], runtime: str, batch: int, past_tokens: int | None = None
) -> dict:
    """An entry's key; `past_tokens`: a decoder's decode step (profiling.decode_point), in the key
    only then, so that a decode profile is read for that point alone."""
    key = {
        "version": CACHE_VERSION,
        "model_sha256": sha256,
        "bounds": list(bounds),
        "device": device_spec(dev),
        "runtime": runtime,
        "batch": batch,
    }
    if past_tokens is not None:
        key["past_tokens"] = past_tokens
    return key


def _key_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    point = f"_p{key['past_tokens']}" if "past_tokens" in key else ""
    return Path(cache_dir) / key["model_sha256"][:16] / f"{key['runtime']}_b{key['batch']}{point}_{digest}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}_{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _stat_id(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def memo_facts(cache_dir: Path, model_path: Path) -> ModelFacts | None:
    """The model's facts as remembered for its file, unless the file changed since."""
    index = _read_json(Path(cache_dir) / MODELS_INDEX) or {}
    entry = index.get(str(model_path.resolve()))
    try:
        if entry is None or entry.get("stat") != _stat_id(model_path) or "decoder" not in entry["facts"]:
            return None  # changed since, or remembered before facts said whether it is a decoder
        return ModelFacts(**entry["facts"])
    except (OSError, TypeError, KeyError):
        return None


def remember_facts(cache_dir: Path, model_path: Path, facts: ModelFacts) -> None:
    """Remember the model's facts for its file as it is now (one writer at a time in this process)."""
    with _index_lock:
        path = Path(cache_dir) / MODELS_INDEX
        index = _read_json(path) or {}
        index[str(model_path.resolve())] = {"stat": _stat_id(model_path), "facts": facts.__dict__}
        _write_json(path, index)


def lookup(
    cache_dir: Path,
    facts: ModelFacts,
    devices: Sequence[Device],
    runtime: str,
    batch: int,
    past_tokens: int | None = None,
) -> dict[str, DeviceProfile]:
    """Cache hits by device name (devices without an entry are absent)."""
    hits: dict[str, DeviceProfile] = {}
    nb = len(facts.bounds) - 1
    for dev in devices:
        key = cache_key(facts.sha256, dev, facts.bounds, runtime, batch, past_tokens)
        data = _read_json(_key_file(cache_dir, key))
        if data is None or data.get("key") != key:
            continue
        try:
            dp = DeviceProfile.from_json(dev.name, data)
        except (KeyError, TypeError, ValueError):
            continue
        if len(dp.block_s) == nb:
            hits[dev.name] = dp
    return hits


def store(
    cache_dir: Path,
    facts: ModelFacts,
    dev: Device,
    runtime: str,
    batch: int,
    measured: DeviceProfile,
    past_tokens: int | None = None,
) -> None:
    """Keep `measured` as `dev`'s entry (it may have been measured on an identical device)."""
    key = cache_key(facts.sha256, dev, facts.bounds, runtime, batch, past_tokens)
    _write_json(_key_file(cache_dir, key), {"key": key, "measured_as": measured.device, **measured.to_json()})


def cached_profile(
    model_path: str | Path,
    testbed: Testbed,
    runtime: str,
    *,
    batch: int = 1,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    past_tokens: int | None = None,
) -> Profile | None:
    """The profile from the cache alone, without reading the model when its file is unchanged; a
    decoder's at the decode step after `past_tokens` (profiling.decode_point)."""
    t0 = time.perf_counter()
    model_path, cache_dir = Path(model_path), Path(cache_dir)
    facts = memo_facts(cache_dir, model_path)
    if facts is None:
        return None
    point = decode_point(facts.decoder, past_tokens)
    hits = lookup(cache_dir, facts, testbed.devices, runtime, batch, point)
    if len(hits) != len(testbed.devices):
        return None
    return assemble(facts, hits, runtime, batch, time.perf_counter() - t0, [], point)


def blocks_folder(workspace: Path, model_path: str | Path) -> Path:
    """Where a model's block files go in a deployment's workspace (a folder its nodes can read)."""
    return Path(workspace) / ".profile_blocks" / Path(model_path).stem


def block_files(graph: ModelGraph, bounds: list[int], blocks_dir: Path) -> list[StageFile]:
    """The block files in blocks_dir, written unless they are already there for this model."""
    mark = blocks_dir / BLOCKS_MARK
    data = _read_json(mark)
    if (
        data is not None
        and data.get("model_sha256") == graph.sha256
        and data.get("bounds") == bounds
        and (blocks_dir / WEIGHTS_FILE).exists()
        and all((blocks_dir / f["model"]).exists() for f in data.get("files", []))
    ):
        return [StageFile(**f) for f in data["files"]]
    mark.unlink(missing_ok=True)
    files = write_stages(graph, bounds[1:-1], blocks_dir)
    _write_json(mark, {"model_sha256": graph.sha256, "bounds": bounds, "files": [f.__dict__ for f in files]})
    return files
