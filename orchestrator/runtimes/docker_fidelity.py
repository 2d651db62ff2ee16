"""Is the testbed emulating what it was asked to? Measured between the real containers.

Links: each receiving container runs a small TCP sink; each sender sends about half a second
of its link's rate through its real, tc-shaped egress. The rate is what the receiver saw
between its first and last byte; the one-way delay of small messages is read across the
containers' shared clock (one host). Where the node adds the delay itself (no netem), the
network part is measured and the node's hold (exact, by its clock) is added, and the method
says so. Transfers go in rounds in which every container sends to one peer and receives from
one, so no container's CPU cap throttles two transfers at once.

CPU: every container runs a busy loop for a fixed wall time in as many processes as its cap
needs; CPU time over wall time is the achieved share, next to the cgroup's throttling counts.
A link rate or CPU cap off by more than 10% is flagged.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import time

import numpy as np

from orchestrator.config import Testbed

TOLERANCE = 0.10
SINK_PORT = 50099
# a 1448-byte TCP segment (MTU 1500, timestamps on) is 1514 bytes in the qdisc: 14 + 20 + 32 of headers
WIRE_PER_PAYLOAD = 1514 / 1448
_USER = "10001"  # the image's user "node": measurements run unprivileged

_SINK = r"""
import json, socket, sys, threading, time
expected, life, port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(64); srv.settimeout(0.5)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = c.makefile("rb")
    head = json.loads(f.readline())
    if head["mode"] == "ping":
        for _ in range(head["count"]):
            sent = int(f.readline()); now = time.time_ns()
            c.sendall(b"%d\n" % (now - sent))
    else:
        n, got, first, first_bytes, now, marks = head["n"], 0, None, 0, 0, []
        while got < n:
            k = len(f.read1(min(1 << 20, n - got)))
            if not k: break
            now = time.time_ns()
            if first is None: first, first_bytes = now, k
            got += k
            marks.append((now, got))
        step = max(1, len(marks) // 400)
        r = {"bytes": got, "first_ns": first, "last_ns": now, "first_bytes": first_bytes, "marks": marks[::step]}
        c.sendall(json.dumps(r).encode() + b"\n")
    c.close()
end, done, threads = time.monotonic() + life, 0, []
while done < expected and time.monotonic() < end:
    try: c, _ = srv.accept()
    except socket.timeout: continue
    t = threading.Thread(target=serve, args=(c,)); t.start(); threads.append(t); done += 1
for t in threads: t.join(timeout=life)
"""

_SEND = r"""
import json, socket, sys, time
ip, n, pings, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def conn():
    end = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); return s
        except OSError:
            if time.monotonic() > end: raise
            time.sleep(0.05)
s = conn(); f = s.makefile("rb")
s.sendall(json.dumps({"mode": "ping", "count": pings}).encode() + b"\n")
one_way = []
for _ in range(pings):
    s.sendall(b"%d\n" % time.time_ns()); one_way.append(int(f.readline()) / 1e6); time.sleep(0.002)
s.close()
s = conn(); f = s.makefile("rb")
s.sendall(json.dumps({"mode": "rate", "n": n}).encode() + b"\n")
chunk, left = b"\0" * (1 << 20), n
while left > 0:
    k = min(left, len(chunk)); s.sendall(chunk[:k]); left -= k
r = json.loads(f.readline()); r["one_way_ms"] = sorted(one_way)
print(json.dumps(r))
"""

_BUSY = r"""
import json, multiprocessing as mp, os, sys, time
procs, wall = int(sys.argv[1]), float(sys.argv[2])
def stat():
    for p in ("/sys/fs/cgroup/cpu,cpuacct/cpu.stat", "/sys/fs/cgroup/cpu/cpu.stat", "/sys/fs/cgroup/cpu.stat"):
        try:
            return dict(line.split() for line in open(p))
        except OSError:
            pass
    return {}
def spin(q):
    t0 = time.monotonic(); c0 = time.process_time()
    while time.monotonic() - t0 < wall:
        pass
    q.put(time.process_time() - c0)
if __name__ == "__main__":
    s0 = stat(); q = mp.Queue(); ps = [mp.Process(target=spin, args=(q,)) for _ in range(procs)]
    t0 = time.monotonic(); [p.start() for p in ps]; cpu = sum(q.get() for _ in ps); [p.join() for p in ps]
    s1 = stat()
    d = lambda k: int(s1.get(k, 0)) - int(s0.get(k, 0))
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "nr_periods": d("nr_periods"), "nr_throttled": d("nr_throttled"),
                      "throttled_ns": d("throttled_time") or d("throttled_usec") * 1000}))
"""


def _err(achieved: float | None, configured: float | None) -> float | None:
    if achieved is None or not configured:
        return None
    return round(achieved / configured - 1, 4)


def _wire_rate(r: dict) -> float:
    """Bit/s on the wire as tc counts it: TCP payload plus Ethernet, IP and TCP headers per segment.

    The slope of bytes received against time over the middle of the transfer: a receiver that
    was descheduled for a moment reads a burst late, which would skew a first-to-last ratio.
    """
    marks = [(t, b) for t, b in r.get("marks") or [] if 0.1 * r["bytes"] <= b <= 0.95 * r["bytes"]]
    if len(marks) >= 8:
        t = np.array([m[0] for m in marks], dtype=np.float64) / 1e9
        b = np.array([m[1] for m in marks], dtype=np.float64)
        slope = float(np.polyfit(t - t[0], b, 1)[0])
        return slope * WIRE_PER_PAYLOAD * 8 if slope > 0 else 0.0
    span = (r["last_ns"] - r["first_ns"]) / 1e9
    return (r["bytes"] - r["first_bytes"]) * WIRE_PER_PAYLOAD * 8 / span if span > 0 else 0.0


def _exec_json(cont, cmd: list[str]) -> dict:
    res = cont.exec_run(cmd, user=_USER)
    out = res.output.decode(errors="replace").strip()
    if res.exit_code != 0:
        raise RuntimeError(f"{cont.name}: measurement failed (exit {res.exit_code}): {out[-500:]}")
    return json.loads(out.splitlines()[-1])


def _rounds(devs: list[str]) -> list[list[tuple[str, str]]]:
    """Directed pairs in rounds where each device sends once and receives once (a shift each round)."""
    n = len(devs)
    return [[(devs[i], devs[(i + r) % n]) for i in range(n)] for r in range(1, n)]


def check_links(
    containers: dict,
    ips: dict[str, str],
    testbed: Testbed,
    node_adds_delay: bool,
    seconds: float = 0.5,
    pings: int = 10,
) -> list[dict]:
    devs = [d.name for d in testbed.devices if d.name in containers]
    rounds = _rounds(devs)
    for dev in devs:  # one sink per receiver, for all its incoming links, then it exits
        containers[dev].exec_run(
            ["python", "-c", _SINK, str(2 * (len(devs) - 1)), "60", str(SINK_PORT)], user=_USER, detach=True
        )
    results: dict[tuple[str, str], dict] = {}

    def one(pair: tuple[str, str]) -> None:
        src, dst = pair
        rate = testbed.link(src, dst).rate_bps
        n = max(256 * 1024, int(rate / 8 * seconds)) if rate else 32 * 1024 * 1024
        cmd = ["python", "-c", _SEND, ips[dst], str(n), str(pings), str(SINK_PORT)]
        results[pair] = _exec_json(containers[src], cmd)

    with cf.ThreadPoolExecutor(max(1, len(devs))) as ex:
        for pairs in rounds:
            list(ex.map(one, pairs))
    retried = set()
    for pair, r in list(results.items()):  # one more try, alone, for a link that looks off
        rate = testbed.link(*pair).rate_bps
        if rate and abs(_wire_rate(r) / rate - 1) > TOLERANCE:
            for dev in (pair[1],):
                containers[dev].exec_run(
                    ["python", "-c", _SINK, "2", "30", str(SINK_PORT + 1)], user=_USER, detach=True
                )
            cmd = [
                "python",
                "-c",
                _SEND,
                ips[pair[1]],
                str(max(256 * 1024, int(rate / 8 * seconds))),
                str(pings),
                str(SINK_PORT + 1),
            ]
            results[pair] = _exec_json(containers[pair[0]], cmd)
            retried.add(pair)
    out = []
    for (src, dst), r in sorted(results.items(), key=lambda kv: (devs.index(kv[0][0]), devs.index(kv[0][1]))):
        cfg = testbed.link(src, dst)
        span = (r["last_ns"] - r["first_ns"]) / 1e9
        ach = _wire_rate(r) or None
        goodput = (r["bytes"] - r["first_bytes"]) * 8 / span if span > 0 else None
        net_ms = r["one_way_ms"][len(r["one_way_ms"]) // 4]  # low quartile: the path, not queueing jitter
        delay = net_ms + (cfg.delay_s * 1e3 if node_adds_delay else 0.0)
        err = _err(ach, cfg.rate_bps) if cfg.rate_bps else None
        derr = _err(delay, cfg.delay_s * 1e3) if cfg.delay_s else None
        # delay: a fraction of a millisecond of network on top of a 1 ms link is not a fault
        d_bad = derr is not None and abs(derr) > TOLERANCE and abs(delay - cfg.delay_s * 1e3) > 0.5
        out.append(
            {
                "from": src,
                "to": dst,
                "configured_bps": cfg.rate_bps or None,
                "achieved_bps": round(ach) if ach else None,
                "configured_delay_ms": round(cfg.delay_s * 1e3, 3),
                "achieved_delay_ms": round(delay, 3),
                "network_delay_ms": round(net_ms, 3),
                "error": err,
                "delay_error": derr,
                "goodput_bps": round(goodput) if goodput else None,
                "bytes": r["bytes"],
                "seconds": round(span, 3),
                "retried": (src, dst) in retried,
                "flagged": bool((err is not None and abs(err) > TOLERANCE) or d_bad),
                "method": "tc-shaped TCP transfer between the containers; delay "
                + (
                    "measured network one-way + the node's own hold (no netem)"
                    if node_adds_delay
                    else "measured one-way (netem)"
                ),
            }
        )
    return out


def check_cpus(containers: dict, testbed: Testbed, seconds: float = 1.0) -> list[dict]:
    devs = [d for d in testbed.devices if d.name in containers]

    def one(d):
        procs = max(1, math.ceil(d.cpus - 1e-9))
        return d, _exec_json(containers[d.name], ["python", "-c", _BUSY, str(procs), str(seconds)])

    out = []
    for d, r in map(one, devs):  # one at a time: the cap, not the host's other load, is measured
        ach = r["cpu_s"] / r["wall_s"]
        err = _err(ach, d.cpus)
        # under its quota the cgroup is throttled in most periods; if not, the host ran out of CPU
        host_bound = bool(err is not None and err < -TOLERANCE and r["nr_throttled"] < r["nr_periods"] / 2)
        out.append(
            {
                "device": d.name,
                "configured": d.cpus,
                "achieved": round(ach, 4),
                "error": err,
                "nr_periods": r["nr_periods"],
                "nr_throttled": r["nr_throttled"],
                "throttled_ms": round(r["throttled_ns"] / 1e6, 1),
                "flagged": bool(err is not None and abs(err) > TOLERANCE),
                "host_bound": host_bound,
                "method": f"busy loop in the container for {seconds:g} s: CPU time / wall time",
            }
        )
    return out


def check(
    containers: dict,
    ips: dict[str, str],
    testbed: Testbed,
    node_adds_delay: bool,
    link_seconds: float = 0.5,
    cpu_seconds: float = 1.0,
) -> dict:
    """Configured versus achieved for every link and CPU cap of a running Docker testbed."""
    t0 = time.perf_counter()
    links = check_links(containers, ips, testbed, node_adds_delay, link_seconds)
    cpus = check_cpus(containers, testbed, cpu_seconds)
    flagged = [
        f"link {x['from']}->{x['to']}: rate error {x['error']:+.1%}"
        if x["error"] is not None and abs(x["error"]) > TOLERANCE
        else f"link {x['from']}->{x['to']}: delay {x['achieved_delay_ms']:.2f} ms vs {x['configured_delay_ms']:.2f} ms"
        for x in links
        if x["flagged"]
    ]
    flagged += [
        f"cpu {x['device']}: {x['achieved']:.3f} vs {x['configured']:g} ({x['error']:+.1%})"
        + (" - the host was the bottleneck (cgroup rarely throttled)" if x["host_bound"] else "")
        for x in cpus
        if x["flagged"]
    ]
    return {
        "links": links,
        "cpus": cpus,
        "flagged": flagged,
        "tolerance": TOLERANCE,
        "seconds": round(time.perf_counter() - t0, 2),
    }
