"""Per-hop cost of our gRPC path against raw TCP, and its share of a hop at the testbed's rates.

Our path is Push (PeerSender -> node servicer), measured on loopback against a raw TCP socket.

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

gRPC stays the data plane, so the ratio to raw TCP has no target any more: it is reported with,
for each link rate in devices/edge4.yaml, a hop's time modelled as the tensor's serialisation
time at that rate plus our one-way loopback cost, and the share of it that cost is (and the share
of the part a raw socket would save). No verdict: exit 0 unless the measurement fails.

The malloc thresholds the local runtime sets for node processes are set here too (re-exec), in
both processes. Run: `.venv/bin/python bench/bench_transport.py [--rounds 3] [--no-malloc-env]`.
On a 2-core machine the numbers move by tens of percent between runs: the figures are medians
over rounds."""

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import testbed_pb2 as pb  # noqa: E402
from common.tensors import TensorFrame  # noqa: E402

# glibc returns big freed blocks to the OS and faults them in again on every message; raising
# these keeps them (40 MB messages ran 4x faster with them). Must be set before the process starts.
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


def link_rates(devices: Path) -> dict[int, list[str]]:
    """Each shaped rate of a testbed (bit/s), fastest first, with the devices' egresses and links at it."""
    from orchestrator.config import load_devices  # not in the receivers: they start from this module

    tb = load_devices(devices)
    rates: dict[int, list[str]] = {}
    for d in tb.devices:
        if d.bandwidth:
            rates.setdefault(d.bandwidth, []).append(f"{d.name} egress")
    for link in tb.links:
        if link.bandwidth:
            rates.setdefault(link.bandwidth, []).append(f"link {link.src}>{link.dst}")
    return dict(sorted(rates.items(), reverse=True))


def hop_shares(rates: dict[int, list[str]], med: dict[tuple[str, str, str], float], nbytes: dict[str, int]) -> None:
    """Print, per rate and tensor, the modelled hop time and the share of it our per-hop cost is."""
    print(
        "\nhop time = tensor at the link's rate + our one-way cost (medians above); share of the hop that cost is,"
        "\nand in brackets the share of its excess over raw TCP:"
    )
    for rate, users in rates.items():
        parts = []
        for label, _, _, _ in SIZES:
            ours, raw = med[("grpc", label, "one")], med[("raw TCP", label, "one")]
            wire = nbytes[label] * 8 / rate * 1e3
            hop = wire + ours
            parts.append(
                f"{label} {wire:.1f} + {ours:.2f} = {hop:.1f} ms, {ours / hop:.2%} ({max(ours - raw, 0) / hop:.2%})"
            )
        print(f"  {rate / 1e6:5g} Mbit/s ({', '.join(users)}): " + " | ".join(parts), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="repeat the whole measurement; figures are medians")
    ap.add_argument("--no-malloc-env", action="store_true", help="leave glibc's malloc thresholds alone")
    ap.add_argument("--devices", type=Path, default=ROOT / "devices" / "edge4.yaml", help="the link rates")
    args = ap.parse_args()
    if not args.no_malloc_env and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    rates = link_rates(args.devices)
    print(f"malloc env: {'default' if args.no_malloc_env else 'raised thresholds'}", flush=True)
    rng = np.random.default_rng(0)
    arrays = {label: rng.standard_normal(shape).astype(np.float32) for label, shape, _, _ in SIZES}
    rounds: list[dict[tuple[str, str, str], float]] = []
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
        rounds.append(results)
        print(f"round {r + 1}/{args.rounds}:", flush=True)
        print_figures(results)
    med = {k: statistics.median(rd[k] for rd in rounds) for k in rounds[0]}
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds:")
        print_figures(med)
    hop_shares(rates, med, {label: a.nbytes for label, a in arrays.items()})
    print("no target: gRPC stays the data plane; the figures above say what it costs a hop")
    return 0


def print_figures(results: dict[tuple[str, str, str], float]) -> None:
    for label, _, n_one, n_stream in SIZES:
        g1, t1 = results[("grpc", label, "one")], results[("raw TCP", label, "one")]
        gs, ts = results[("grpc", label, "stream")], results[("raw TCP", label, "stream")]
        print(
            f"  {label} one-way: grpc {g1:.2f} ms, raw TCP {t1:.2f} ms, {g1 / t1:.2f}x"
            f" | streaming: grpc {gs:.2f} ms/tensor, raw TCP {ts:.2f} ms/tensor, {gs / ts:.2f}x"
            f"  (median of {n_one}; {n_stream} back to back)",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())
