"""A model's weights stored once, keyed by its content; plan and run folders hard-link them.

An entry `<store>/<key>/` holds `weights.bin` (every big initializer, page-aligned),
`graph.onnx` (the model with those initializers pointing into weights.bin by offset) and, from
its first cut, `analysis.json` (the graph's analysis, see analysis_file). Cutting a stored model
again parses only that small graph, reads its analysis and writes small stage files, and each plan
folder gets `weights.bin` as a hard link to the entry's file: a run adds kilobytes, `cp -r` of
a run folder still copies the weights with it, and Docker nodes read it like any file of the
run folder. Where the store is on another file system the file is copied, and the plan says so.

An entry is written in a temporary folder and renamed into place, so a concurrent reader sees
all of it or none. The key is the sha256 of the model file (and of its external data files, if
any), remembered by path, size, mtime and inode, so an unchanged model is not hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from orchestrator.partition.analysis_file import read_analysis, write_analysis
from orchestrator.partition.graph import SMALL_TENSOR_BYTES, ModelGraph, analyse, embedded, load_graph, tensor_nbytes

STORE_ENV = "EDGE_TESTBED_WEIGHTS"  # the store's folder, where the default does not suit
DEFAULT_STORE = Path(".cache") / "weights"  # beside runs/, so that hard links reach it
WEIGHTS_FILE = "weights.bin"
GRAPH_FILE = "graph.onnx"
ANALYSIS_FILE = "analysis.json"
MEMO_FILE = "models.json"
MEMO_ENTRIES = 256  # model paths remembered; older ones are hashed again when next seen
RECENT_NS = 2_000_000_000  # a file changed this lately is hashed again next time (same-tick rewrites)
_ALIGN_BIG = 4096  # page-aligned offsets let ONNX Runtime map big tensors instead of copying
_ALIGN = 64
_CHUNK = 16 * 1024 * 1024


def kept_apart(t: TensorProto) -> bool:
    """Whether an initializer's data lives in weights.bin rather than inside the graph."""
    return tensor_nbytes(t) > SMALL_TENSOR_BYTES and t.data_type != TensorProto.STRING


def _external(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_id(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


@dataclass(frozen=True)
class ModelKey:
    """A model file's sha256 (plan.json's `model_sha256`) and its store key (the same, unless
    the model keeps weights in external files, whose content the key then covers too)."""

    sha256: str
    key: str


class StoredWeights:
    """One model's entry in the store."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.weights = directory / WEIGHTS_FILE
        self.analysis = directory / ANALYSIS_FILE

    @cached_property
    def graph(self) -> onnx.ModelProto:
        """The model with its big initializers pointing into weights.bin."""
        return onnx.load(str(self.dir / GRAPH_FILE), load_external_data=False)

    @cached_property
    def index(self) -> dict[str, tuple[int, int]]:
        """Offset and length in weights.bin of each big initializer, by name."""
        out: dict[str, tuple[int, int]] = {}
        for t in self.graph.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                info = _external(t)
                out[t.name] = (int(info["offset"]), int(info["length"]))
        return out

    def analysed(self, path: Path, sha256: str) -> ModelGraph:
        """The stored graph analysed, for the model at `path`: read from the entry's analysis file,
        made and written there where this code has none (a store it cannot write: made each time)."""
        graph = read_analysis(self.analysis, self.graph, path, sha256)
        if graph is None:
            graph = analyse(self.graph, path, sha256)
            with contextlib.suppress(OSError):
                write_analysis(graph, self.analysis)
        return graph

    def complete(self) -> bool:
        """Both files there and weights.bin as long as the graph says (an entry cut short is not one)."""
        try:
            size = self.weights.stat().st_size
            return size >= max((o + n for o, n in self.index.values()), default=0)
        except (OSError, DecodeError, KeyError, ValueError):
            return False

    def link_into(self, folder: Path) -> str | None:
        """Make `folder/weights.bin` this entry's file: a hard link, or a copy where the store is
        on another file system (returned: a note saying so). Replaced atomically."""
        dst = folder / WEIGHTS_FILE
        try:
            if os.path.samefile(dst, self.weights):
                return None
        except FileNotFoundError:
            pass
        tmp = folder / f".{WEIGHTS_FILE}.{uuid.uuid4().hex}"
        note = None
        try:
            try:
                os.link(self.weights, tmp)
            except OSError as e:
                shutil.copyfile(self.weights, tmp)
                note = (
                    f"weights copied into {folder} ({self.weights.stat().st_size / 1e6:.0f} MB): the weights store "
                    f"{self.dir.parent} cannot be hard-linked from there ({e.strerror}); "
                    f"set {STORE_ENV} to a folder on the same file system"
                )
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return note


class _WeightsWriter:
    """Appends each big initializer's bytes to a new weights file, aligned."""

    def __init__(self, f: BinaryIO, base: Path):
        self.f = f
        self.base = base  # the model's folder: external data locations resolve from here
        self.pos = 0
        self.sources: dict[str, BinaryIO] = {}

    def close(self) -> None:
        for s in self.sources.values():
            s.close()

    def add(self, t: TensorProto) -> tuple[int, int]:
        length = tensor_nbytes(t)
        pad = (-self.pos) % (_ALIGN_BIG if length >= 65536 else _ALIGN)
        self.f.write(b"\0" * pad)
        self.pos += pad
        offset = self.pos
        if t.data_location == TensorProto.EXTERNAL:
            length = self._copy_external(t)
        else:
            data = (
                t.raw_data
                if t.HasField("raw_data")
                else numpy_helper.to_array(t)
                .astype(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<"), copy=False)
                .tobytes()
            )
            self.f.write(data)
            length = len(data)
        self.pos += length
        return offset, length

    def _copy_external(self, t: TensorProto) -> int:
        info = _external(t)
        loc = info["location"]
        src_off = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else tensor_nbytes(t)
        src = self.sources.get(loc)
        if src is None:
            src = self.sources[loc] = open(self.base / loc, "rb")  # noqa: SIM115 - closed in close()
        self.f.flush()
        left, s_off, d_off = length, src_off, self.pos
        try:  # kernel-side copy where the platform has it
            while left > 0:
                n = os.copy_file_range(src.fileno(), self.f.fileno(), left, s_off, d_off)
                if n <= 0:
                    raise OSError("short copy")
                left, s_off, d_off = left - n, s_off + n, d_off + n
            self.f.seek(self.pos + length)
        except (AttributeError, OSError):
            self.f.seek(d_off)
            src.seek(s_off)
            while left > 0:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise OSError(f"{loc}: external data ends early for {t.name}") from None
                self.f.write(chunk)
                left -= len(chunk)
        return length


def _stored_graph(model: onnx.ModelProto, initializers: list[TensorProto]) -> onnx.ModelProto:
    """The model rebuilt around the given initializers, its weights not copied."""
    m = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    )
    m.opset_import.extend(model.opset_import)
    m.metadata_props.extend(model.metadata_props)
    m.functions.extend(model.functions)
    src, g = model.graph, m.graph
    g.name = src.name
    g.doc_string = src.doc_string
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.initializer.extend(initializers)
    return m


class WeightsStore:
    """The folder of stored entries, one per model content."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get(STORE_ENV) or DEFAULT_STORE)
        self._keys: dict[tuple[str, str], ModelKey] = {}  # (model path, sha256) -> key, this process
        self._entries: dict[str, StoredWeights] = {}

    def graph(self, model_path: str | Path) -> ModelGraph:
        """The model analysed for cutting: from its stored graph when stored (its weights are not
        read), else read whole (`put` stores it)."""
        path = Path(model_path)
        known = self._remembered(path)
        stored = self._entry(known.key) if known is not None else None
        if known is not None and stored is not None:
            self._keys[(str(path.resolve()), known.sha256)] = known
            return stored.analysed(path, known.sha256)
        seen = _file_id(path) if path.is_file() else None
        graph = load_graph(path)
        self._key(graph, seen)
        return graph

    def put(self, graph: ModelGraph) -> StoredWeights:
        """The model's entry, written first where the store does not hold it."""
        key = self._key(graph)
        return self._entry(key.key) or self._write(graph, key.key)

    # -- keys --------------------------------------------------------------------------------------

    def _key(self, graph: ModelGraph, seen: list[int] | None = None) -> ModelKey:
        """The graph's key, remembered for its file; `seen`: the file's id from before it was read."""
        where = (str(graph.path.resolve()), graph.sha256)
        known = self._keys.get(where) or self._remembered(graph.path)
        if known is None or known.sha256 != graph.sha256:
            base = graph.path.parent
            locations = sorted(
                {_external(t)["location"] for t in graph.model.graph.initializer if t.data_location == t.EXTERNAL}
            )
            deps = [(base / loc, _file_id(base / loc)) for loc in locations]
            digest = hashlib.sha256(graph.sha256.encode())
            for loc, (dep, _) in zip(locations, deps, strict=True):
                digest.update(loc.encode())
                digest.update(_file_sha256(dep).encode())
            known = ModelKey(graph.sha256, digest.hexdigest() if locations else graph.sha256)
            self._remember(graph.path, seen, deps, known)
        self._keys[where] = known
        return known

    def _remembered(self, path: Path) -> ModelKey | None:
        """The key recorded for this file, if it and its external files are unchanged since."""
        entry = self._memo().get(str(path.resolve()))
        try:
            if entry is None or entry["id"] != _file_id(path):
                return None
            if any(_file_id(Path(p)) != fid for p, fid in entry["deps"]):
                return None
            return ModelKey(entry["sha256"], entry["key"])
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def _remember(self, path: Path, seen: list[int] | None, deps: list[tuple[Path, list[int]]], key: ModelKey) -> None:
        """Record the key by the files' ids, unless a file changed while it was read or so lately
        that a rewrite within the same clock tick would keep its id."""
        try:
            ids = [(path, seen or _file_id(path)), *deps]
            if any(_file_id(p) != fid or time.time_ns() - fid[1] < RECENT_NS for p, fid in ids):
                return
        except OSError:
            return
        memo = self._memo()
        name = str(path.resolve())
        memo.pop(name, None)
        memo[name] = {
            "id": ids[0][1],
            "deps": [[str(p.resolve()), fid] for p, fid in deps],
            "sha256": key.sha256,
            "key": key.key,
        }
        kept = dict(list(memo.items())[-MEMO_ENTRIES:])
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{MEMO_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(kept, indent=1))
        os.replace(tmp, self.root / MEMO_FILE)  # a concurrent writer's entry may be lost: it is hashed again

    def _memo(self) -> dict:
        try:
            data = json.loads((self.root / MEMO_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    # -- entries -----------------------------------------------------------------------------------

    def _entry(self, key: str) -> StoredWeights | None:
        stored = self._entries.get(key)
        if stored is None:
            candidate = StoredWeights(self.root / key)
            if not candidate.complete():
                return None
            stored = self._entries[key] = candidate
        return stored

    def _write(self, graph: ModelGraph, key: str) -> StoredWeights:
        """Write the entry in a temporary folder, then rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=self.root))
        try:
            initializers: list[TensorProto] = []
            with open(tmp / WEIGHTS_FILE, "wb") as f:
                writer = _WeightsWriter(f, graph.path.parent)
                try:
                    for t in graph.model.graph.initializer:
                        if not kept_apart(t):
                            initializers.append(embedded(t, graph.path.parent))
                            continue
                        offset, length = writer.add(t)
                        ref = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
                        ref.data_location = TensorProto.EXTERNAL
                        for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                            ref.external_data.add(key=k, value=v)
                        initializers.append(ref)
                finally:
                    writer.close()
                f.flush()
                os.fsync(f.fileno())  # the entry outlives this process: its bytes must be on disk first
            os.chmod(tmp / WEIGHTS_FILE, 0o444)  # shared by every plan's hard link: never written in place
            (tmp / GRAPH_FILE).write_bytes(_stored_graph(graph.model, initializers).SerializeToString())
            os.chmod(tmp, 0o755)
            dst = self.root / key
            if dst.exists() and not StoredWeights(dst).complete():  # its weights were cut short
                self._discard(dst)
            try:
                os.rename(tmp, dst)
            except OSError:  # another process stored the same model meanwhile: keep its entry
                if not StoredWeights(dst).complete():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._entries.pop(key, None)
        stored = self._entry(key)
        if stored is None:
            raise OSError(f"{self.root / key}: the stored weights are incomplete after writing")
        return stored

    def _discard(self, entry: Path) -> None:
        """Move a broken entry aside (atomically, so no reader links it half-removed), then remove it."""
        aside = self.root / f".{entry.name[:16]}.{uuid.uuid4().hex}.discarded"
        try:
            os.rename(entry, aside)
        except FileNotFoundError:  # another process discarded it first
            return
        shutil.rmtree(aside, ignore_errors=True)
