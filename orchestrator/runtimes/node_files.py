"""Stage models sent to nodes that share no folder with the orchestrator (a swarm worker host).

A stage file written by the partitioner is a small graph whose big initializers are external
data in the plan folder's `weights.bin`, which holds the weights of the whole model. A node gets
a copy of the graph whose external data point into a compact weights file holding only the
byte ranges this graph references (its stage's weights, page-aligned as in the store), and that
file; a self-contained model goes as it is. Names are content-addressed
(`<sha256, 16 hex>-stage_k.onnx`, `<sha256, 16 hex>-stage_k.weights`), so what a node holds
already (Has) is never sent again: a plan loaded twice, or profiling blocks reused, cost one
call each. The weights are read from the source in pieces, never held whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto

from orchestrator.driving.client import FILE_CHUNK_BYTES, NodeClient
from orchestrator.partition.graph import tensor_nbytes

WEIGHTS_SUFFIX = ".weights"
_ALIGN_BIG = 4096  # as weights_store: page-aligned offsets let ONNX Runtime map big tensors
_ALIGN = 64
_BIG = 65536
_NAME_STEM = 120


@dataclass(frozen=True)
class _Range:
    """Bytes of a source file that go to `at` in the compact weights file."""

    source: Path
    offset: int
    length: int
    at: int


@dataclass
class Outgoing:
    """One file for the node's store: its name, size, digest and how to read its bytes again."""

    name: str
    size: int
    sha256: str
    pieces: Callable[[], Iterator[bytes]]


@dataclass
class StagePackage:
    """What a node needs for one local stage file: the weights (if any) first, the graph last."""

    local: Path
    files: list[Outgoing]
    sources: dict[Path, tuple[int, int, int]] = field(default_factory=dict)  # file ids it was made from

    @property
    def name(self) -> str:
        """The name the node keeps the graph under (what a Load names)."""
        return self.files[-1].name

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    def current(self) -> bool:
        """Whether the files it was made from are unchanged."""
        try:
            return all(_file_id(p) == fid for p, fid in self.sources.items())
        except OSError:
            return False

    def send(self, client: NodeClient) -> str:
        """Send what the node lacks; returns the node's path of the graph."""
        path = ""
        for f in self.files:
            path = client.has_file(f.name, f.size, f.sha256) or client.put_stream(f.name, f.size, f.sha256, f.pieces())
        return path


def _file_id(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:_NAME_STEM] or "file"


def _file_pieces(path: Path) -> Callable[[], Iterator[bytes]]:
    def pieces() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while piece := f.read(FILE_CHUNK_BYTES):
                yield piece

    return pieces


def _bytes_pieces(data: bytes) -> Callable[[], Iterator[bytes]]:
    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), FILE_CHUNK_BYTES):
            yield data[i : i + FILE_CHUNK_BYTES]

    return pieces


def _ranges_pieces(ranges: list[_Range]) -> Callable[[], Iterator[bytes]]:
    """The compact weights file's bytes: each range read from its source in pieces, zero padding
    between; small pieces are joined up to FILE_CHUNK_BYTES (fewer messages)."""

    def raw() -> Iterator[bytes]:
        files: dict[Path, int] = {}
        pos = 0
        try:
            for r in ranges:
                if r.at > pos:
                    yield bytes(r.at - pos)
                fd = files.get(r.source)
                if fd is None:
                    fd = files[r.source] = os.open(r.source, os.O_RDONLY)
                done = 0
                while done < r.length:
                    piece = os.pread(fd, min(FILE_CHUNK_BYTES, r.length - done), r.offset + done)
                    if not piece:
                        raise OSError(f"{r.source}: ends before byte {r.offset + r.length}")
                    done += len(piece)
                    yield piece
                pos = r.at + r.length
        finally:
            for fd in files.values():
                os.close(fd)

    def pieces() -> Iterator[bytes]:
        buf = bytearray()
        for piece in raw():
            if len(buf) + len(piece) > FILE_CHUNK_BYTES and buf:
                yield bytes(buf)
                buf = bytearray()
            if len(piece) >= FILE_CHUNK_BYTES:
                yield piece
            else:
                buf += piece
        if buf:
            yield bytes(buf)

    return pieces


def _digest(pieces: Callable[[], Iterator[bytes]]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for piece in pieces():
        digest.update(piece)
        size += len(piece)
    return size, digest.hexdigest()


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for g in [attr.g] if attr.HasField("g") else []:
                yield from _graph_tensors(g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor of a graph that may hold external data: initializers and node attributes,
    subgraphs (If/Loop/Scan bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _external(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = [*_graph_tensors(model.graph), *(t for fn in model.functions for t in _node_tensors(fn.node))]
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def _plain(path: Path) -> StagePackage:
    pieces = _file_pieces(path)
    size, sha = _digest(pieces)
    name = f"{sha[:16]}-{_stem(path.name)}"
    return StagePackage(path, [Outgoing(name, size, sha, pieces)], {path: _file_id(path)})


def prepare(local_path: str | Path) -> StagePackage:
    """What to send for a stage file: the graph with its weights made compact, or the file itself."""
    path = Path(local_path).resolve()
    ids = {path: _file_id(path)}
    if path.suffix != ".onnx":
        return _plain(path)
    model = onnx.load(str(path), load_external_data=False)
    tensors = _external(model)
    if not tensors:
        return _plain(path)
    spans: dict[tuple[Path, int, int], list[TensorProto]] = {}
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        source = (path.parent / info.get("location", "")).resolve()
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else tensor_nbytes(t)
        if source not in ids:
            ids[source] = _file_id(source)
        if offset < 0 or offset + length > ids[source][0]:
            raise ValueError(f"{path}: {t.name}'s data ({offset}+{length} bytes) lies outside {source}")
        spans.setdefault((source, offset, length), []).append(t)
    ranges: list[_Range] = []
    at = 0
    for source, offset, length in sorted(spans):
        at += (-at) % (_ALIGN_BIG if length >= _BIG else _ALIGN)
        ranges.append(_Range(source, offset, length, at))
        at += length
    weights = _ranges_pieces(ranges)
    wsize, wsha = _digest(weights)
    stem = _stem(path.stem)
    wname = f"{wsha[:16]}-{stem}{WEIGHTS_SUFFIX}"
    for r in ranges:
        for t in spans[(r.source, r.offset, r.length)]:
            del t.external_data[:]
            for key, val in (("location", wname), ("offset", str(r.at)), ("length", str(r.length))):
                t.external_data.add(key=key, value=val)
    data = model.SerializeToString()
    gsha = hashlib.sha256(data).hexdigest()
    graph = Outgoing(f"{gsha[:16]}-{stem}.onnx", len(data), gsha, _bytes_pieces(data))
    return StagePackage(path, [Outgoing(wname, wsize, wsha, weights), graph], ids)


def send_stage_file(client: NodeClient, local_path: str | Path) -> str:
    """Send a stage file (and only its stage's weights) to the node unless it holds them; returns
    the path the node reads it at (for StageSpec.model_path)."""
    return prepare(local_path).send(client)


class NodeFiles:
    """The stage files sent to the nodes of one deployment: each file prepared once (its weights'
    digest read once), and what each device got remembered, so that a later Load of the same
    file asks nothing. `forget(device)` for a node that came back empty (restarted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._packages: dict[Path, StagePackage] = {}
        self._sent: dict[str, dict[str, str]] = {}  # device -> graph name -> the node's path

    def package(self, local_path: str | Path) -> StagePackage:
        path = Path(local_path).resolve()
        with self._lock:
            pkg = self._packages.get(path)
            if pkg is None or not pkg.current():
                pkg = self._packages[path] = prepare(path)
            return pkg

    def path_for(self, device: str, client: NodeClient, local_path: str | Path) -> str:
        """The node's path of `local_path`, sent to `device` first where it has not been."""
        pkg = self.package(local_path)
        with self._lock:
            known = self._sent.get(device, {}).get(pkg.name)
        if known:
            return known
        remote = pkg.send(client)
        with self._lock:
            self._sent.setdefault(device, {})[pkg.name] = remote
        return remote

    def forget(self, device: str) -> None:
        with self._lock:
            self._sent.pop(device, None)
