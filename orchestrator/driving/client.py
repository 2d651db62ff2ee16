"""The one way the orchestrator talks to a node: a client per node that owns its gRPC channel.

Every call (load a stage, health, stats, the Drive stream, and the scenario calls to come) goes
through NodeClient, and every gRPC failure comes out as one error type, NodeError, that names
the device and the address it was reached at. No other orchestrator module opens a channel.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from common import testbed_pb2 as pb
from common.grpc_options import CHANNEL_OPTIONS
from common.rpc import node_stub
from common.tensors import TensorFrame

HEALTH_POLL_S = 0.1
FILE_CHUNK_BYTES = 1 << 20  # a file sent to a node (put_file) travels in pieces of this size


class NodeError(RuntimeError):
    """A call to a node failed: unreachable, timed out, refused, or the stream broke."""

    def __init__(self, device: str, address: str, what: str, code: grpc.StatusCode | None = None):
        self.device, self.address, self.code = device, address, code
        super().__init__(f"node {device} at {address}: {what}")


def _describe(e: grpc.RpcError) -> tuple[str, grpc.StatusCode | None]:
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else "") or str(e)
    return f"{code.name if code is not None else 'error'}: {details}", code


class DriveStream:
    """A Drive call in progress: iterating it yields the result frames, and a stream that breaks
    raises NodeError. `cancel()`, from any thread, ends it: a cancelled stream just stops."""

    def __init__(self, client: NodeClient, call: Any):
        self._client = client
        self._call = call
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[TensorFrame]:
        try:
            yield from self._call
        except grpc.RpcError as e:
            if not self._cancelled.is_set():
                what, code = _describe(e)
                raise self._client.error(f"Drive: {what}", code) from None

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()


class NodeClient:
    """One node's control connection. Close it (or use it as a context manager) when done."""

    def __init__(self, device: str, address: str):
        self.device = device
        self.address = address
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = node_stub(self._channel)

    def error(self, what: str, code: grpc.StatusCode | None = None) -> NodeError:
        return NodeError(self.device, self.address, what, code)

    def _call(self, name: str, request: Any, timeout_s: float) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout_s)
        except grpc.RpcError as e:
            what, code = _describe(e)
            raise self.error(f"{name}: {what}", code) from None

    def load(self, request: pb.LoadRequest, timeout_s: float = 120.0) -> pb.LoadReply:
        """Give the node its stages, peers and links; a node that refuses raises its reason."""
        reply = self._call("Load", request, timeout_s)
        if not reply.ok:
            raise self.error(f"refused its stage: {reply.error}")
        return reply

    def health(self, timeout_s: float = 5.0) -> pb.HealthReply:
        return self._call("Health", pb.Empty(), timeout_s)

    def stats(self, timeout_s: float = 5.0) -> pb.StatsReply:
        return self._call("Stats", pb.Empty(), timeout_s)

    def held(self, timeout_s: float = 5.0) -> set[int]:
        """The request ids on the node now (queued, computing, held for a link or waiting to be
        sent): what would be lost if it crashed this moment."""
        return set(self.stats(timeout_s).held_ids)

    def set_link(self, peer: pb.Peer, timeout_s: float = 5.0) -> pb.Peer:
        """Change one outgoing link in place (the rate the node paces, the delay it holds); returns
        the link as the node now holds it."""
        return self._call("SetLink", peer, timeout_s)

    def probe(self, device: str, nbytes: int, timeout_s: float = 2.0) -> None:
        """Ask the node to put a rate probe of `nbytes` on its link to `device` (skipped when
        requests wait for that link); the peer's stats() report its arrival."""
        self._call("Probe", pb.ProbeRequest(device=device, bytes=nbytes), timeout_s)

    def requota(self, timeout_s: float = 30.0) -> pb.LoadReply:
        """Make the node re-read its CPU quota and resize its stages' threads; returns what holds."""
        return self._call("Requota", pb.Empty(), timeout_s)

    def measure(self, probe: str, args: list | tuple = (), detach: bool = False, timeout_s: float = 120.0) -> dict:
        """Run a node/probes.py probe beside the node (its container, cgroup and user); the JSON it
        printed ({} when detached: started, not waited for). A probe that fails raises NodeError."""
        import json

        req = pb.MeasureRequest(probe=probe, args=[str(a) for a in args], detach=detach, timeout_s=timeout_s)
        reply = self._call("Measure", req, 5.0 if detach else timeout_s + 5.0)
        if not reply.ok:
            raise self.error(f"Measure {probe}: {reply.error}")
        if detach:
            return {}
        try:
            return json.loads(reply.json)
        except ValueError:
            raise self.error(f"Measure {probe}: not a JSON line: {reply.json[-200:]!r}") from None

    def has_file(self, name: str, size: int, sha256: str, timeout_s: float = 30.0) -> str:
        """The node's path of its stored file `name` with this size and sha256; "" when it has none."""
        reply = self._call("Has", pb.FileChunk(name=name, size=size, sha256=sha256), timeout_s)
        if not reply.ok:
            raise self.error(f"Has {name}: {reply.error}")
        return reply.path if reply.had else ""

    def put_stream(self, name: str, size: int, sha256: str, data: Iterator[bytes], timeout_s: float = 600.0) -> str:
        """Send a file of `size` bytes and digest `sha256`, its bytes in `data`'s pieces (each at most
        a few MiB), to the node's store as `name`; returns the node's path of it. A node that
        refuses it (a bad name, a size or digest that does not match) raises its reason."""

        def chunks() -> Iterator[pb.FileChunk]:
            yield pb.FileChunk(name=name, size=size, sha256=sha256)
            for piece in data:
                yield pb.FileChunk(data=piece)

        reply = self._call("Put", chunks(), timeout_s)
        if not reply.ok:
            raise self.error(f"refused file {name}: {reply.error}")
        return reply.path

    def put_file(self, local_path: str | Path, name: str, timeout_s: float = 600.0) -> str:
        """Send a local file to the node's store as `name`, unless it holds it already (same name,
        size and sha256); returns the node's path of it. The file is read in pieces, twice (its
        digest first), never whole."""
        path = Path(local_path)
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while piece := f.read(FILE_CHUNK_BYTES):
                digest.update(piece)
                size += len(piece)
        sha256 = digest.hexdigest()
        held = self.has_file(name, size, sha256)
        if held:
            return held

        def pieces() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while piece := f.read(FILE_CHUNK_BYTES):
                    yield piece

        return self.put_stream(name, size, sha256, pieces(), timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0, alive: Callable[[], bool] | None = None) -> None:
        """Poll Health until the node answers; `alive()` returning False means it died."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise self.error("exited before it became healthy")
            try:
                self.health(timeout_s=1.0)
                return
            except NodeError as e:
                last = e.code.name if e.code is not None else str(e)
            time.sleep(HEALTH_POLL_S)
        raise self.error(f"not healthy after {timeout_s:.0f} s ({last})")

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the node answers (a Health call that waits for the connection); an
        unreachable node raises. Unlike grpc.channel_ready_future, this leaves no polling
        thread behind to trip over the channel once it is closed."""
        try:
            self._stub.Health(pb.Empty(), timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as e:
            what, code = _describe(e)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                what = f"no connection within {timeout_s:g} s"
            raise self.error(f"unreachable ({what})", code) from None

    def drive(self, frames: Iterator[TensorFrame]) -> DriveStream:
        """The Drive call on a source node: `frames` in, result frames out (frame codec both ways)."""
        return DriveStream(self, self._stub.Drive(frames))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
