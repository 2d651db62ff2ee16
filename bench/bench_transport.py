"""Per-hop transport cost: our Push path (PeerSender -> node servicer) against raw TCP, loopback.

Two figures per tensor size, each for both transports, receivers in a child process (as nodes):

- one-way: from "the sender has a numpy array" to "the receiver has a numpy array over the
  received bytes", one tensor at a time on one long-lived stream/connection; median of N after
  warm-up. Both processes read the same wall clock.
- streaming: N tensors back to back on the same stream/connection; time from the first send to
  the last tensor's arrival, divided by N (throughput cost per tensor, copies pipelined).

gRPC is the real path: PeerSender (frame codec: one join of the array buffers, identity bytes
through gRPC) into NodeServicer.Push, which hands _route a TensorFrame whose array is a view into
the one received bytes object. Raw TCP is a 16-byte header, sendall(memoryview) of the array,
and recv_into a preallocated buffer viewed by np.frombuffer.

The malloc thresholds the local runtime sets for node processes are set here too (re-exec), in
both processes. Run: `.venv/bin/python bench/bench_transport.py [--rounds 3] [--no-malloc-env]`.
On a 2-core machine the numbers move by tens of percent between runs: run several rounds."""

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
from common.tensors import TensorFrame  # noqa: E402

# glibc returns big freed blocks to the OS and faults them in again on every message; raising
# these keeps them (FACTS.md: 40 MB messages 4x faster). Must be set before the process starts.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31)}

# label, shape (float32), one-way samples, streaming count
SIZES = [("0.6 MB", (1, 197, 768), 200, 400), ("19 MB", (32, 197, 768), 30, 40)]
WARMUP = 5
REPORT, SILENT = 1, 2  # the receiver reports the arrival time of REPORT frames only


def _grpc_receiver(ready: mp.Queue, times: mp.Queue) -> None:
    from node.server import NodeServer, NodeServicer

    class Receiver(NodeServicer):
        def _route(self, frame: TensorFrame, recv_ns: int) -> None:
            now = time.time_ns()
            (arr,) = frame.arrays.values()
            assert arr.size > 0
            if frame.header.stage == REPORT:
                times.put((frame.header.request_id, now))

    server = NodeServer("rx", 0, "127.0.0.1", servicer=Receiver("rx")).start()
    ready.put(server.port)
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
        report, n = n & 1, n >> 1
        recv_exact(view[:n])
        now = time.time_ns()
        arr = np.frombuffer(buf, dtype=np.float32, count=n // 4)
        assert arr.size > 0
        if report:
            times.put((rid, now))


class Grpc:
    name = "grpc"

    def __init__(self) -> None:
        from node.links import PeerSender

        ctx = mp.get_context("spawn")
        self.ready, self.times = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_grpc_receiver, args=(self.ready, self.times), daemon=True)
        self.proc.start()
        port = self.ready.get(timeout=60)
        self.sender = PeerSender(f"127.0.0.1:{port}", name="rx")

    def send(self, i: int, arr: np.ndarray, report: bool) -> None:
        header = pb.Frame(request_id=i, stage=REPORT if report else SILENT)
        self.sender.send(TensorFrame(header, {"x": arr}))

    def close(self) -> None:
        self.sender.close()
        self.proc.terminate()


class RawTcp:
    name = "raw TCP"

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.times = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_tcp_receiver, args=(self.ready, self.times), daemon=True)
        self.proc.start()
        port = self.ready.get(timeout=60)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, i: int, arr: np.ndarray, report: bool) -> None:
        payload = memoryview(np.ascontiguousarray(arr)).cast("B")
        self.sock.sendall(struct.pack("<qq", i, payload.nbytes << 1 | int(report)))
        self.sock.sendall(payload)

    def close(self) -> None:
        self.sock.close()
        self.proc.terminate()


def one_way(link: Grpc | RawTcp, arr: np.ndarray, count: int) -> float:
    """Median ms from send to the receiver's array, one tensor in flight at a time."""
    lat = []
    for i in range(WARMUP + count):
        t0 = time.time_ns()
        link.send(i, arr, True)
        rid, t1 = link.times.get(timeout=60)
        assert rid == i
        if i >= WARMUP:
            lat.append((t1 - t0) / 1e6)
    return statistics.median(lat)


def streaming(link: Grpc | RawTcp, arr: np.ndarray, count: int) -> float:
    """ms per tensor, `count` tensors back to back (after a warm-up burst)."""
    for i in range(WARMUP):
        link.send(i, arr, i == WARMUP - 1)
    link.times.get(timeout=60)
    t0 = time.time_ns()
    for i in range(count):
        link.send(i, arr, i == count - 1)
    rid, t1 = link.times.get(timeout=120)
    assert rid == count - 1
    return (t1 - t0) / 1e6 / count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole measurement")
    ap.add_argument("--no-malloc-env", action="store_true", help="leave glibc's malloc thresholds alone")
    args = ap.parse_args()
    if not args.no_malloc_env and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    print(f"malloc env: {'default' if args.no_malloc_env else 'raised thresholds'}", flush=True)
    rng = np.random.default_rng(0)
    arrays = {label: rng.standard_normal(shape).astype(np.float32) for label, shape, _, _ in SIZES}
    for r in range(args.rounds):
        results: dict[tuple[str, str, str], float] = {}
        for cls in (Grpc, RawTcp):
            link = cls()
            try:
                for label, _, n_one, n_stream in SIZES:
                    results[(cls.name, label, "one")] = one_way(link, arrays[label], n_one)
                    results[(cls.name, label, "stream")] = streaming(link, arrays[label], n_stream)
            finally:
                link.close()
        if args.rounds > 1:
            print(f"round {r + 1}:", flush=True)
        for label, _, n_one, n_stream in SIZES:
            g1, t1 = results[("grpc", label, "one")], results[("raw TCP", label, "one")]
            gs, ts = results[("grpc", label, "stream")], results[("raw TCP", label, "stream")]
            print(
                f"{label} one-way: grpc {g1:.2f} ms, raw TCP {t1:.2f} ms, {g1 / t1:.1f}x"
                f" | streaming: grpc {gs:.2f} ms/tensor, raw TCP {ts:.2f} ms/tensor, {gs / ts:.1f}x"
                f"  (median of {n_one}; {n_stream} back to back)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
