"""Measurements run inside a device's container (or beside a local node) to check its emulation.

`python -m node.probes <probe> ...`, started by a node's Measure call (node/measure.py: beside
the node, in its container and cgroup) or by `docker exec`; each prints one JSON line on stdout
(the sink prints nothing: its senders get its figures). `hold` needs nothing of its container:
the orchestrator calls it in its own process, against a node's control port, so no probe process
competes with that node for its CPU cap.

- sink: accepts connections on a port; answers pings with the one-way time it saw, and after a
  rate transfer the bytes it received, when, and a trace of their arrival, all stamped with the
  kernel's receive time (a sink throttled by its CPU quota reads late, but stamps right).
- send: pings a sink (one-way delay on the shared host clock), then sends it N bytes over TCP.
- sends: a device's part in a whole fidelity check's schedule in one process: its sink, its sends
  (each in its slot), and its busy loop.
- busy: spins in P processes for a fixed wall time: CPU time over wall time, and the cgroup's
  throttling counters around it.
- hold: sends small probe frames to a node through the node's own link sender, stamped to be
  held for the link's delay, and reads back from that node's Stats how long it really held them
  (holds(): every incoming link of one node, over one stream).
- stage: runs a model as a node's stage runs it, back to back for a fixed window: the mean time
  of one run under this container's CPU cap.
- meter / stream: a TCP stream kept saturated until a given time, and its receiver sampling the
  bytes its interface received every 10 ms: a link's rate over time, while its shaping changes.
- netem: whether this kernel can attach netem (needs NET_ADMIN).
- quota: the CPU quota this container's cgroup holds, as the node reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

_CPU_STAT = ("/sys/fs/cgroup/cpu,cpuacct/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat", "/sys/fs/cgroup/cpu.stat")
_CONNECT_S = 10.0
_READ_BYTES = 1 << 20
_MARKS = 400  # arrival trace points kept per transfer


# -- sink ----------------------------------------------------------------------------------------

# SO_TIMESTAMPNS (Linux; Python's socket module names it only from 3.14 on): each read comes with
# the kernel's receive time of its bytes
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TS_SPACE = socket.CMSG_SPACE(16)  # one struct timespec


class _StampedReader:
    """Reads a TCP connection with the time the kernel received what each read returns: when the
    bytes reached this container's network stack, not when a process throttled by its CPU quota
    got round to reading them (time.time_ns() where the kernel gives no stamp)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        conn.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.buf = bytearray(_READ_BYTES)
        self.pending = b""  # read past the last line handed out
        self.pending_ns = 0

    def read(self, limit: int) -> tuple[int, int]:
        """Up to `limit` bytes into self.buf: how many (0 at the end) and when they arrived."""
        n, anc, _, _ = self.conn.recvmsg_into([memoryview(self.buf)[: min(limit, len(self.buf))]], _TS_SPACE)
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack("qq", data[:16])
                return n, sec * 1_000_000_000 + nsec
        return n, time.time_ns()

    def readline(self) -> tuple[bytes, int]:
        """One line and when its last byte arrived."""
        while b"\n" not in self.pending:
            n, at = self.read(_READ_BYTES)
            if not n:
                raise EOFError("connection closed mid-line")
            self.pending += bytes(self.buf[:n])
            self.pending_ns = at
        line, _, self.pending = self.pending.partition(b"\n")
        return line, self.pending_ns


def _serve(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        rd = _StampedReader(conn)
        line, _ = rd.readline()
        head = json.loads(line)
        if head["mode"] == "ping":
            for _ in range(head["count"]):
                sent, at = rd.readline()
                conn.sendall(b"%d\n" % (at - int(sent)))
            return
        # a rate transfer: until n bytes or the sender's end of it (a transfer cut at its deadline)
        n, got, first, first_bytes, last, marks = head["n"], 0, None, 0, 0, []
        if rd.pending:  # bytes that came with the head line
            got = first_bytes = len(rd.pending)
            first = last = rd.pending_ns
            marks.append((last, got))
        while got < n:
            k, at = rd.read(n - got)
            if not k:
                break
            if first is None:
                first, first_bytes = at, k
            got += k
            last = at
            marks.append((at, got))
        step = max(1, len(marks) // _MARKS)
        kept = marks[::step] + (
            [marks[-1]] if marks and (len(marks) - 1) % step else []
        )  # the trace ends at the last byte
        r = {"bytes": got, "first_ns": first, "last_ns": last, "first_bytes": first_bytes, "marks": kept}
        conn.sendall(json.dumps(r).encode() + b"\n")


def sink(expected: int, life_s: float, port: int, host: str = "0.0.0.0") -> None:
    """Serve `expected` connections (pings or transfers), or until `life_s` has passed."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(64)
        srv.settimeout(0.5)
        end, threads = time.monotonic() + life_s, []
        while len(threads) < expected and time.monotonic() < end:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=_serve, args=(conn,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=max(0.0, end - time.monotonic()))


# -- send ----------------------------------------------------------------------------------------


def _connect(ip: str, port: int, timeout_s: float = 30.0) -> socket.socket:
    """A connection to the sink, retried while it is still starting."""
    end = time.monotonic() + min(_CONNECT_S, timeout_s)
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=timeout_s)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def send(ip: str, n: int, pings: int, port: int, deadline_ns: int = 0) -> dict:
    """One-way delays of `pings` small messages (ms, sorted; the sink reads their arrival from
    the kernel, this host's clock), then the sink's view of n bytes sent over TCP. With a deadline
    (host clock, ns) the transfer stops there (`cut`: fewer bytes than n; its rate is still the
    slope of what arrived). `mss`: the payload of a full segment, to count the headers on the wire."""
    budget_s = max(1.0, (deadline_ns - time.time_ns()) / 1e9 + 5.0) if deadline_ns else 30.0
    one_way = []
    with _connect(ip, port, budget_s) as s:
        rd = _StampedReader(s)
        s.sendall(json.dumps({"mode": "ping", "count": pings}).encode() + b"\n")
        for _ in range(pings):
            s.sendall(b"%d\n" % time.time_ns())
            one_way.append(int(rd.readline()[0]) / 1e6)
            time.sleep(0.002)
    with _connect(ip, port, budget_s) as s:
        s.sendall(json.dumps({"mode": "rate", "n": n}).encode() + b"\n")
        mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        chunk, left = memoryview(bytes(_READ_BYTES)), n
        while left > 0:
            if deadline_ns:
                t = (deadline_ns - time.time_ns()) / 1e9
                if t <= 0:
                    break
                s.settimeout(min(t, 0.2))
            try:
                left -= s.send(chunk[: min(left, len(chunk))])
            except TimeoutError:
                continue
        s.settimeout(budget_s)
        if left > 0:
            s.shutdown(socket.SHUT_WR)  # the sink reports what arrived
        r = json.loads(_StampedReader(s).readline()[0])
    r["one_way_ms"] = sorted(one_way)
    r["mss"] = mss
    r["cut"] = left > 0
    return r


SLOT_GUARD_NS = 50_000_000  # a transfer stops this long before its slot ends: its reply, the next's start


def _sleep_to(t_ns: int) -> None:
    if (wait := t_ns - time.time_ns()) > 0:
        time.sleep(wait / 1e9)


def sends(plan: dict) -> dict:
    """A device's part in a fidelity check's schedule (host clock), in one process (a process
    start under a small CPU quota takes a second):

    - its sink, serving `expected` connections until `until_ns`;
    - its transfers, transfer i starting at t0_ns + round_i * slot_ns and stopping before its
      slot ends, so that the transfers of one round run side by side and never spill into the next
      (`late_ms`: how late it started, `took_ms`: when it ended, both from its slot's start);
    - its busy loop (`busy`: {at_ns, procs, wall_s}), once the transfers are over, at a time when
      only devices whose caps add up to a share of the host spin.

    `began_ns`: when this process was ready."""
    began = time.time_ns()
    rx = None
    if plan.get("expected"):
        life_s = (plan["until_ns"] - began) / 1e9
        rx = threading.Thread(target=sink, args=(plan["expected"], life_s, plan["port"]), daemon=True)
        rx.start()
    out = []
    for t in sorted(plan.get("transfers") or [], key=lambda t: t["round"]):
        start = plan["t0_ns"] + t["round"] * plan["slot_ns"]
        _sleep_to(start)
        row = {"round": t["round"], "ip": t["ip"], "late_ms": round(max(0, time.time_ns() - start) / 1e6, 3)}
        try:
            row |= send(t["ip"], t["n"], plan["pings"], plan["port"], start + plan["slot_ns"] - SLOT_GUARD_NS)
        except (OSError, ValueError, EOFError) as e:
            row["error"] = f"{type(e).__name__}: {e}"
        row["took_ms"] = round((time.time_ns() - start) / 1e6, 3)
        out.append(row)
    if rx is not None:
        rx.join(timeout=max(0.0, (plan["until_ns"] - time.time_ns()) / 1e9))
    result: dict = {"transfers": out, "began_ns": began}
    if b := plan.get("busy"):
        _sleep_to(b["at_ns"])
        late_ms = round((time.time_ns() - b["at_ns"]) / 1e6, 3)
        result["busy"] = busy(b["procs"], b["wall_s"]) | {"late_ms": late_ms}
    return result


# -- meter and stream ----------------------------------------------------------------------------


def _rx_bytes(path: str = "/proc/net/dev") -> int:
    """Bytes received on every interface but loopback, as the kernel counts them (whole frames)."""
    with open(path) as f:
        rows = [line.split(":", 1) for line in f.readlines()[2:]]
    return sum(int(rest.split()[0]) for name, rest in rows if name.strip() != "lo")


def meter(port: int, t0_ns: int, until_ns: int, bin_ns: int = 10_000_000, host: str = "0.0.0.0") -> dict:
    """Accept one stream, drain it, and sample this container's received bytes every `bin_ns` from
    t0_ns to until_ns (host clock: shared by every container of one host); the bytes that arrived
    in each bin, spread over the time between two samples.

    The interface's counter, not the bytes TCP hands over: after a loss TCP holds back everything
    behind the missing segment until its retransmission gets through (seconds on a crawling
    link), while the link itself was delivering all along. A sample late under a small CPU cap is
    stamped with its own time, so the bytes still land in the right bins, only coarser."""
    n = max(1, -(-(until_ns - t0_ns) // bin_ns))
    bins = [0.0] * n
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(1)
        srv.settimeout(max(1.0, (until_ns - time.time_ns()) / 1e9))
        conn, _ = srv.accept()

    def drain() -> None:
        buf = bytearray(_READ_BYTES)
        try:
            while conn.recv_into(buf):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        prev_t, prev_c = time.time_ns(), _rx_bytes()
        while prev_t < until_ns:
            time.sleep(max(0.0, (bin_ns - (time.time_ns() - t0_ns) % bin_ns) / 1e9))
            t, c = time.time_ns(), _rx_bytes()
            lo, hi = max(prev_t, t0_ns), min(t, until_ns)
            if hi > lo and t > prev_t:  # the bytes since the last sample, spread evenly over its span
                per_ns = (c - prev_c) / (t - prev_t)
                for k in range((lo - t0_ns) // bin_ns, min(n, (hi - t0_ns - 1) // bin_ns + 1)):
                    a, b = max(lo, t0_ns + k * bin_ns), min(hi, t0_ns + (k + 1) * bin_ns)
                    bins[k] += per_ns * (b - a)
            prev_t, prev_c = t, c
    finally:
        conn.close()
    return {"t0_ns": t0_ns, "bin_ns": bin_ns, "bins": [round(b) for b in bins], "unit": "wire bytes"}


def stream(ip: str, port: int, until_ns: int) -> dict:
    """Keep a TCP stream to a meter saturated until `until_ns` (host clock); the bytes handed over."""
    sent = 0
    with _connect(ip, port) as s:
        chunk = memoryview(bytes(_READ_BYTES))
        while (left := (until_ns - time.time_ns()) / 1e9) > 0:
            s.settimeout(min(left, 0.2))
            try:
                sent += s.send(chunk)
            except TimeoutError:
                continue
            except OSError:  # the meter closed at its end time
                break
    return {"sent": sent}


# -- busy ----------------------------------------------------------------------------------------


def _cpu_stat() -> dict[str, str]:
    for p in _CPU_STAT:
        try:
            return dict(line.split() for line in Path(p).read_text().splitlines())
        except OSError:
            continue
    return {}


def _spin(wall_s: float, out: mp.Queue) -> None:
    t0, c0 = time.monotonic(), time.process_time()
    while time.monotonic() - t0 < wall_s:
        pass
    out.put(time.process_time() - c0)


def busy(procs: int, wall_s: float) -> dict:
    """CPU seconds `procs` spinning processes got in `wall_s`, and the throttling meanwhile."""
    s0 = _cpu_stat()
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_spin, args=(wall_s, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    cpu = sum(q.get() for _ in ps)
    for p in ps:
        p.join()
    s1 = _cpu_stat()

    def delta(k: str) -> int:
        return int(s1.get(k, 0)) - int(s0.get(k, 0))

    return {
        "cpu_s": cpu,
        "wall_s": wall_s,
        "nr_periods": delta("nr_periods"),
        "nr_throttled": delta("nr_throttled"),
        "throttled_ns": delta("throttled_time") or delta("throttled_usec") * 1000,
    }


# -- hold ----------------------------------------------------------------------------------------


def _holds_now(stats: Callable[[], object]) -> dict[str, object]:
    return {h.device: h for h in stats().holds}


HOLD_GAP_S = 0.05  # between two probe frames: half a 100-ms CFS period
HOLD_SETTLE_S = 0.4  # after the setup, before the first frame counted: four CFS periods


def holds(
    address: str,
    links: list[tuple[str, float]],
    count: int = 4,
    gap_s: float = HOLD_GAP_S,
    offset_s: float = 0.0,
    wait_s: float = 10.0,
    stats: Callable[[], object] | None = None,
) -> dict[str, dict]:
    """Send `count` probe frames to the node at `address` for each (device, hold_s) of `links`,
    as that device's link would (the node's own link sender, each frame stamped to be held
    hold_s); the node holds them like any frame of that link and drops them. Returns per device
    the holds asked and really applied (means, ms), from its Stats.

    What is measured is the node's hold, not this probe's load on it: one frame at a time, each
    sent once the one before has been released (`gap_s` apart at least), so that no frame's
    arrival competes with another's release for the node's CPU quota or its interpreter; no
    heartbeat, the node's Stats read once before and once after, not polled meanwhile; a first
    frame that is not counted, and a pause after the setup (a new connection and a Stats call
    cost a 0.05-CPU node several 100-ms periods of its quota: the first link's frames would find
    it throttled). `stats`: the node's Stats call on a connection already open (a NodeClient's),
    else one is opened. Probing several nodes at once, give each its own `offset_s` within the
    gap: frames sent to all at the same instants wake them all at once, and they queue for the
    host's CPUs."""
    import grpc
    import numpy as np

    from common import testbed_pb2 as pb
    from common.grpc_options import CHANNEL_OPTIONS
    from common.rpc import node_stub
    from common.tensors import TensorFrame
    from node.links import PeerSender

    if count < 1 or any(h <= 0 for _, h in links):
        raise ValueError("hold needs delays > 0 s and at least one frame")
    at = time.monotonic()

    def send(device: str, hold_s: float) -> None:
        nonlocal at
        if (wait := at - time.monotonic()) > 0:
            time.sleep(wait)
        sender.set_link(0.0, hold_s)
        frame = TensorFrame(pb.Frame(request_id=0, probe=True), {"probe": np.zeros(16, np.float32)})
        frame.header.timings.add(stage=-1, device=device)
        sender.send(frame)
        at += max(gap_s, hold_s + 0.01)

    with contextlib.ExitStack() as stack:
        if stats is None:
            stub = node_stub(stack.enter_context(grpc.insecure_channel(address, options=CHANNEL_OPTIONS)))
            stats = lambda: stub.Stats(pb.Empty(), timeout=5.0)  # noqa: E731
        sender = PeerSender(address, 0.0, 0.0, name=address, heartbeat_s=0.0)
        try:
            # a frame not counted first: a new stream's first held frame starts the node's delay
            # line (a thread), and the connection is set up; neither is a hold a link's frames get
            send(*links[0])
            time.sleep(max(0.0, at - time.monotonic()))  # released before the count starts
            before = _holds_now(stats)
            at = max(at, time.monotonic()) + HOLD_SETTLE_S + offset_s
            for device, hold_s in links:
                for _ in range(count):
                    send(device, hold_s)
            deadline = time.monotonic() + wait_s
            while True:
                after = _holds_now(stats)
                n = {d: after[d].frames - (before[d].frames if d in before else 0) for d, _ in links if d in after}
                if all(n.get(d, 0) >= count for d, _ in links) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            sender.close()
    short = [d for d, _ in links if n.get(d, 0) < count]
    if short:
        raise RuntimeError(f"{address} held {min(n.get(d, 0) for d in short)} of {count} probe frames from {short[0]}")
    out = {}
    for d, _ in links:
        a, b = after[d], before.get(d, pb.LinkHold())
        out[d] = {
            "frames": n[d],
            "asked_ms": (a.asked_ns - b.asked_ns) / n[d] / 1e6,
            "held_ms": (a.held_ns - b.held_ns) / n[d] / 1e6,
        }
    return out


def hold(address: str, device: str, hold_s: float, count: int = 10, gap_s: float = HOLD_GAP_S) -> dict:
    """holds() for one link: what the node at `address` really holds `device`'s frames."""
    return holds(address, [(device, hold_s)], count, gap_s)[device]


# -- stage ---------------------------------------------------------------------------------------

# ONNX element types a probe input can have, and how a seeded generator draws one
_DRAWS = {
    "tensor(float)": lambda rng, shape: rng.standard_normal(shape).astype("float32"),
    "tensor(float16)": lambda rng, shape: rng.standard_normal(shape).astype("float16"),
    "tensor(double)": lambda rng, shape: rng.standard_normal(shape),
    "tensor(int64)": lambda rng, shape: rng.integers(0, 10, shape, dtype="int64"),
    "tensor(int32)": lambda rng, shape: rng.integers(0, 10, shape, dtype="int32"),
    "tensor(bool)": lambda rng, shape: rng.integers(0, 2, shape).astype(bool),
}


def stage(model: str, window_s: float, threads: int = 1, warmup: int = 3, seed: int = 0) -> dict:
    """Mean seconds of one run of `model` in a session opened as a node opens a stage's (threads
    given, no spinning), on inputs drawn from a generator seeded with `seed` (symbolic dimensions
    1), run back to back for `window_s` after `warmup` runs."""
    import numpy as np

    from common.ort_session import SessionSettings, open_session

    if window_s <= 0:
        raise ValueError("stage needs a window > 0 s")
    sess = open_session(model, SessionSettings(threads=threads, spinning=False))
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        if i.type not in _DRAWS:
            raise ValueError(f"input {i.name}: no probe input of type {i.type}")
        feeds[i.name] = _DRAWS[i.type](rng, [d if isinstance(d, int) else 1 for d in i.shape])
    for _ in range(warmup):
        sess.run(None, feeds)
    runs, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < window_s:
        sess.run(None, feeds)
        runs += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # cpu_s: the CPU one run took; mean_s over it is how long the run waited beside its own work
    return {"mean_s": wall / runs, "cpu_s": cpu / runs, "runs": runs, "threads": threads}


# -- facts ---------------------------------------------------------------------------------------


def netem() -> dict:
    from node import tc

    return {"netem": tc.has_netem()}


def quota() -> dict:
    from node import resources

    lim = resources.limits()
    return {"cpu_quota": lim.cpu_quota, "cores": lim.cores}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node.probes", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="probe", required=True)
    p = sub.add_parser("sink")
    p.add_argument("expected", type=int)
    p.add_argument("life_s", type=float)
    p.add_argument("port", type=int)
    p = sub.add_parser("send")
    p.add_argument("ip")
    p.add_argument("n", type=int)
    p.add_argument("pings", type=int)
    p.add_argument("port", type=int)
    p.add_argument("--deadline-ns", type=int, default=0, help="stop the transfer then (host clock)")
    p = sub.add_parser("sends")
    p.add_argument(
        "plan",
        help='JSON: {"t0_ns", "slot_ns", "until_ns", "port", "pings", "expected", "transfers": [{"round", "ip", "n"}]}',
    )
    p = sub.add_parser("busy")
    p.add_argument("procs", type=int)
    p.add_argument("wall_s", type=float)
    p = sub.add_parser("hold")
    p.add_argument("address", help="host:port of the receiving node")
    p.add_argument("--from", dest="device", required=True, help="the sending device's name")
    p.add_argument("--hold-s", type=float, required=True)
    p.add_argument("--count", type=int, default=10)
    p = sub.add_parser("stage")
    p.add_argument("model", help="an ONNX file this process can read")
    p.add_argument("--window-s", type=float, required=True, help="how long to run it back to back")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p = sub.add_parser("meter")
    p.add_argument("port", type=int)
    p.add_argument("t0_ns", type=int)
    p.add_argument("until_ns", type=int)
    p.add_argument("--bin-ns", type=int, default=10_000_000)
    p = sub.add_parser("stream")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("until_ns", type=int)
    sub.add_parser("netem")
    sub.add_parser("quota")
    a = ap.parse_args(argv)
    if a.probe == "sink":
        sink(a.expected, a.life_s, a.port)
        return 0
    result = {
        "send": lambda: send(a.ip, a.n, a.pings, a.port, a.deadline_ns),
        "sends": lambda: sends(json.loads(a.plan)),
        "busy": lambda: busy(a.procs, a.wall_s),
        "hold": lambda: hold(a.address, a.device, a.hold_s, a.count),
        "stage": lambda: stage(a.model, a.window_s, a.threads, a.warmup),
        "meter": lambda: meter(a.port, a.t0_ns, a.until_ns, a.bin_ns),
        "stream": lambda: stream(a.ip, a.port, a.until_ns),
        "netem": netem,
        "quota": quota,
    }[a.probe]()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
