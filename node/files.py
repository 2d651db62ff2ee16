"""The node's own file store: stage models and their weights sent to it (Put), for nodes that share
no folder with the orchestrator (a swarm worker host has no copy of the run folder).

A file arrives as a stream of FileChunks, the first naming it with its size and sha256. It is
written under a temporary name in the same folder and renamed into place only once its size and
digest match, so a reader (a Load) sees the whole file or none, and a stream cut short, too long
or with another digest leaves nothing behind. Names are plain file names: no folders, nothing
that could step outside the store.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import testbed_pb2 as pb

FILES_ENV = "EDGE_FILES_DIR"
MAX_CHUNK_BYTES = 16 << 20  # one chunk's data; clients send 1 MiB
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")  # no leading dot: temporary names start with one
_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ = 1 << 20


class FileRefused(ValueError):
    """A file the store will not take: a bad name, size or digest, or a stream that did not match."""


@dataclass(frozen=True)
class Stored:
    path: Path
    size: int
    had: bool  # the store held it already


def default_root() -> Path:
    """$EDGE_FILES_DIR, else a folder of this user's under the system temp dir."""
    env = os.environ.get(FILES_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"edge-testbed-files-{os.getuid()}"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise FileRefused(
            f"file name {name!r} refused: a plain file name of letters, digits, '.', '_' and '-' "
            "(no folder, not starting with '.', at most 200 characters)"
        )
    return name


def _check_digest(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256 or ""):
        raise FileRefused(f"sha256 {sha256!r} refused: 64 lowercase hex digits")
    return sha256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def _file_id(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


class FileStore:
    """One folder of received files. Digests of the files it wrote or checked are remembered by
    file id (size, mtime, inode), so `has` reads a file only the first time it sees it."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self._lock = threading.Lock()
        self._digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}

    def folder(self) -> Path:
        """The store's folder, made on first use."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root.resolve()

    def path(self, name: str) -> Path:
        return self.folder() / check_name(name)

    def has(self, name: str, size: int, sha256: str) -> Path | None:
        """The file's path where the store holds `name` with this size and digest, else None."""
        path = self.path(name)
        _check_digest(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if st.st_size != size:
            return None
        return path if self._digest(name, path, st) == sha256 else None

    def put(self, chunks: Iterable[pb.FileChunk]) -> Stored:
        """Receive one file; raises FileRefused (nothing left behind) where it does not match."""
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            raise FileRefused("empty stream: no chunk named a file")
        name, size, sha256 = first.name, first.size, first.sha256
        path = self.path(name)
        _check_digest(sha256)
        if size < 0:
            raise FileRefused(f"{name}: size {size} refused")
        held = self.has(name, size, sha256)
        if held is not None:  # answered at once: the sender's stream is not read further
            return Stored(held, size, had=True)
        free = shutil.disk_usage(path.parent).free
        if size > free:
            raise FileRefused(f"{name}: {size} bytes do not fit in {path.parent} ({free} bytes free)")
        tmp = path.parent / f".{name}.{uuid.uuid4().hex}.part"
        try:
            digest = hashlib.sha256()
            written = 0
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                for chunk in _with_first(first, it):
                    data = chunk.data
                    if len(data) > MAX_CHUNK_BYTES:
                        raise FileRefused(f"{name}: a chunk of {len(data)} bytes, more than {MAX_CHUNK_BYTES}")
                    written += len(data)
                    if written > size:
                        raise FileRefused(f"{name}: more than the {size} bytes announced")
                    digest.update(data)
                    f.write(data)
            if written != size:
                raise FileRefused(f"{name}: {written} bytes received, {size} announced")
            got = digest.hexdigest()
            if got != sha256:
                raise FileRefused(f"{name}: sha256 {got} received, {sha256} announced")
            os.replace(tmp, path)
            with self._lock:
                self._digests[name] = (_file_id(path.stat()), sha256)
        finally:
            tmp.unlink(missing_ok=True)
        return Stored(path, size, had=False)

    def _digest(self, name: str, path: Path, st: os.stat_result) -> str:
        fid = _file_id(st)
        with self._lock:
            known = self._digests.get(name)
        if known is not None and known[0] == fid:
            return known[1]
        sha = file_sha256(path)
        with self._lock:
            self._digests[name] = (fid, sha)
        return sha


def _with_first(first: pb.FileChunk, rest: Iterator[pb.FileChunk]) -> Iterator[pb.FileChunk]:
    yield first
    yield from rest


_stores: dict[Path, FileStore] = {}
_stores_lock = threading.Lock()


def store() -> FileStore:
    """The store of this process's nodes, at default_root() as the environment names it now."""
    root = default_root()
    with _stores_lock:
        s = _stores.get(root)
        if s is None:
            s = _stores[root] = FileStore(root)
        return s
