"""Per-hop transport cost: our Push path (PeerSender -> node servicer) against raw TCP, loopback.

One-way time from "the sender has a numpy array" to "the receiver has a numpy array over the
received bytes", one frame at a time on one long-lived stream/connection, median after warm-up.
The gRPC figure includes encoding (tobytes into the protobuf), serialization, HTTP/2, parsing and
decoding; raw TCP is a length prefix, sendall, and recv_into a preallocated buffer. Receivers run
in a child process, as nodes do. Run: `.venv/bin/python bench/bench_transport.py [--no-malloc-env]`."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import testbed_pb2 as pb  # noqa: E402
from common.tensors import add_tensor, from_tensor  # noqa: E402

# glibc returns big freed blocks to the OS and faults them in again on every message; raising
# these keeps them (FACTS.md: 40 MB messages 4x faster). Must be set before the process starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31)}

SIZES = [("0.6 MB", (1, 197, 768), 50), ("19 MB", (32, 197, 768), 20)]
WARMUP = 5


def _grpc_receiver(ready: mp.Queue, times: mp.Queue) -> None:
    from node.server import NodeServer, NodeServicer

    class Receiver(NodeServicer):
        def _route(self, frame: pb.Frame, recv_ns: int) -> None:
            arrays = [from_tensor(t) for t in frame.tensors]
            assert arrays[0].size > 0
            times.put((frame.request_id, time.time_ns()))

    server = NodeServer("rx", 0, "127.0.0.1", servicer=Receiver("rx")).start()
    port = server.port
    ready.put(port)
    time.sleep(3600)


def _tcp_receiver(ready: mp.Queue, times: mp.Queue) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    ready.put(lsock.getsockname()[1])
    conn, _ = lsock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(16)
    buf = bytearray(64 << 20)
    view = memoryview(buf)

    def recv_exact(mv: memoryview) -> bool:
        got = 0
        while got < len(mv):
            k = conn.recv_into(mv[got:])
            if k == 0:
                return False
            got += k
        return True

    while recv_exact(memoryview(header)):
        rid, n = struct.unpack("<qq", header)
        recv_exact(view[:n])
        arr = np.frombuffer(buf, dtype=np.float32, count=n // 4)
        assert arr.size > 0
        times.put((rid, time.time_ns()))


def bench_grpc(arr: np.ndarray, count: int) -> float:
    from node.links import PeerSender

    ctx = mp.get_context("spawn")
    ready, times = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_grpc_receiver, args=(ready, times), daemon=True)
    proc.start()
    port = ready.get(timeout=30)
    sender = PeerSender(f"127.0.0.1:{port}", name="rx")
    lat = []
    try:
        for i in range(WARMUP + count):
            t0 = time.time_ns()
            frame = pb.Frame(request_id=i, stage=1, sent_ns=t0)
            add_tensor(frame.tensors, "x", arr)
            sender.send(frame)
            rid, t1 = times.get(timeout=30)
            assert rid == i
            if i >= WARMUP:
                lat.append((t1 - t0) / 1e6)
    finally:
        sender.close()
        proc.terminate()
    return statistics.median(lat)


def bench_tcp(arr: np.ndarray, count: int) -> float:
    ctx = mp.get_context("spawn")
    ready, times = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_tcp_receiver, args=(ready, times), daemon=True)
    proc.start()
    port = ready.get(timeout=30)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = memoryview(np.ascontiguousarray(arr)).cast("B")
    lat = []
    try:
        for i in range(WARMUP + count):
            t0 = time.time_ns()
            sock.sendall(struct.pack("<qq", i, payload.nbytes))
            sock.sendall(payload)
            rid, t1 = times.get(timeout=30)
            assert rid == i
            if i >= WARMUP:
                lat.append((t1 - t0) / 1e6)
    finally:
        sock.close()
        proc.terminate()
    return statistics.median(lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-malloc-env", action="store_true", help="leave glibc's malloc thresholds alone")
    args = ap.parse_args()
    if not args.no_malloc_env and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    print(f"malloc env: {'default' if args.no_malloc_env else 'raised thresholds'}", flush=True)
    rng = np.random.default_rng(0)
    for label, shape, count in SIZES:
        arr = rng.standard_normal(shape).astype(np.float32)
        g = bench_grpc(arr, count)
        t = bench_tcp(arr, count)
        print(
            f"{label}: grpc {g:.2f} ms, raw TCP {t:.2f} ms, ratio {g / t:.1f}x  (median of {count})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
