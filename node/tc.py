"""Link shaping with Linux tc, built the way Mininet's link.py does it.

Pure functions BUILD the tc command lines (easy to test and to print in a report); a small
runner executes them and checks every exit status, then reads back what the kernel holds and
compares it with what was asked. tc errors are never ignored: silently ignoring them is the
classic failure of shaping tools.

Layout on the sender's egress interface (one per node):

    root htb 1:  (default -> 1:1)
      class 1:1   default, unshaped (DEFAULT_RATE)     leaf pfifo
      class 1:10  peer 0, rate = ceil = its bandwidth  leaf netem delay (or pfifo)  <- u32 dst ip
      class 1:11  peer 1 ...

Every class gets an explicit leaf qdisc: htb's default leaf is a pfifo whose limit is the
device's txqueuelen, and Docker's veths have txqueuelen 0 (a 1-packet queue: heavy loss, TCP far
below the rate). Where the kernel has no netem (many have not), the delay is left to
the node, which delays frames itself; the plan says which peers need that.
"""

from __future__ import annotations

import gzip
import ipaddress
import math
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from typing import NamedTuple

MTU_FRAME = 1514  # bytes on the wire for a 1500-byte MTU Ethernet frame
DEFAULT_RATE_BPS = 10_000_000_000  # the unshaped default class: far above any emulated link
ROOT_HANDLE = "1:"
DEFAULT_CLASS = "1:1"
FIRST_PEER_MINOR = 0x10
TC_TIMEOUT_S = 10.0
SLOW_FRAME_S = 0.01  # a link slower than a frame in this long gets a bucket under a frame (change_burst_bytes)


@dataclass(frozen=True)
class PeerShape:
    ip: str  # the peer's address: traffic to it is shaped
    rate_bps: int  # egress rate towards it, bit/s
    delay_s: float = 0.0  # one-way delay towards it


class ShapingPlan(NamedTuple):
    commands: list[list[str]]
    node_delay_s: dict[str, float]  # peer ip -> delay the node must add itself (no netem)


class TcError(RuntimeError):
    """A tc command failed; the message names the command and carries tc's stderr."""


# --------------------------------------------------------------------------------- build (pure)


def burst_bytes(rate_bps: int) -> int:
    """About one millisecond of the rate, never less than a few full frames.

    Too small a burst caps htb below its rate at high rates; a few MTUs keep low
    rates from stalling on a single GSO/full-size frame.
    """
    return max(math.ceil(rate_bps / 8 / 1000), 4 * MTU_FRAME)


def queue_limit_packets(rate_bps: int, seconds: float = 0.05) -> int:
    """Leaf queue length: ~50 ms at the rate, at least 64 packets (enough for TCP at full rate)."""
    return max(64, math.ceil(rate_bps / 8 * seconds / MTU_FRAME))


def gso_max_size(peers: list[PeerShape], lump_s: float = 0.002) -> int:
    """Largest offload segment: about `lump_s` of the slowest shaped link, one frame to 64 KB."""
    slowest = min((p.rate_bps for p in peers), default=0)
    if not slowest:
        return 65536
    return max(MTU_FRAME, min(65536, int(slowest / 8 * lump_s)))


def _classid(i: int) -> str:
    return f"1:{FIRST_PEER_MINOR + i:x}"  # tc parses class minors as hex


def _leaf_handle(i: int) -> str:
    return f"{FIRST_PEER_MINOR + i:x}:"


def _cmd(line: str) -> list[str]:
    # Written as one string per command for readability (as Mininet does); interface names,
    # addresses and numbers never contain whitespace, so splitting is exact.
    return line.split()


def change_burst_bytes(rate_bps: int) -> int:
    """The burst of a class changed while traffic flows: about a millisecond of the rate, but one
    full frame at low rates, not several. A class left idle (TCP backing off after a dead moment)
    fills its bucket, and a bucket of several frames would let a burst through above the new
    rate; the offload lumps are one frame at such rates anyway (`gso_max_size`).

    A slow link (a frame takes over 10 ms) gets a bucket of a tenth of a frame: htb keeps its
    tokens as time, and a class may send while it owes less than its bucket, so a bucket of a
    frame lets three frames through back to back after an idle moment; with a tenth of a frame
    it sends one frame at a time and owes one frame time at most. That debt survives a `tc class
    change` (the kernel resets a class's tokens only when it creates it), which is why a trace's
    zero crawls at 100 kbit (a lump owes 0.24 s) rather than less."""
    if rate_bps * SLOW_FRAME_S < MTU_FRAME * 8:
        return MTU_FRAME // 10
    return max(math.ceil(rate_bps / 8 / 1000), MTU_FRAME)


def _htb_class(iface: str, classid: str, rate_bps: int, verb: str = "add") -> list[str]:
    burst = burst_bytes(rate_bps) if verb == "add" else change_burst_bytes(rate_bps)
    # quantum: bytes served per round between classes; between one frame and htb's sane maximum.
    quantum = min(max(burst, MTU_FRAME), 200_000)
    return _cmd(
        f"tc class {verb} dev {iface} parent {ROOT_HANDLE} classid {classid} htb"
        f" rate {rate_bps}bit ceil {rate_bps}bit burst {burst}b cburst {burst}b quantum {quantum}"
    )


def _netem_limit(rate_bps: int, delay_s: float) -> int:
    # netem holds a delay's worth of packets in flight as well as the queue.
    return queue_limit_packets(rate_bps) + math.ceil(rate_bps / 8 * delay_s / MTU_FRAME)


def shaping_commands(iface: str, peers: list[PeerShape], netem: bool) -> ShapingPlan:
    """tc commands that shape egress on `iface` per destination peer (assumes no root qdisc yet;
    `shape()` clears an old one first). Returns the commands and the peers whose delay the node
    must add itself because netem is unavailable."""
    if not iface or any(c.isspace() for c in iface):
        raise ValueError(f"bad interface name {iface!r}")
    seen: set[str] = set()
    for p in peers:
        if p.rate_bps <= 0:
            raise ValueError(f"peer {p.ip}: rate must be > 0 bit/s, got {p.rate_bps}")
        if p.delay_s < 0:
            raise ValueError(f"peer {p.ip}: delay must be >= 0 s, got {p.delay_s}")
        ipaddress.ip_address(p.ip)  # raises ValueError on a malformed address
        if p.ip in seen:
            raise ValueError(f"peer {p.ip} listed twice")
        seen.add(p.ip)

    default_minor = DEFAULT_CLASS.split(":")[1]
    cmds: list[list[str]] = [
        # Segmentation offload hands htb up to 64 KB at once, which it lets through as a unit: a
        # 10 mbit link would deliver in 52 ms lumps. Cap the lumps at ~2 ms of the slowest link.
        _cmd(f"ip link set dev {iface} gso_max_size {gso_max_size(peers)}"),
        _cmd(f"tc qdisc add dev {iface} root handle {ROOT_HANDLE} htb default {default_minor}"),
        _htb_class(iface, DEFAULT_CLASS, DEFAULT_RATE_BPS),
        _cmd(f"tc qdisc add dev {iface} parent {DEFAULT_CLASS} handle 2: pfifo limit 1000"),
    ]
    node_delay: dict[str, float] = {}
    for i, p in enumerate(peers):
        classid, leaf = _classid(i), _leaf_handle(i)
        cmds.append(_htb_class(iface, classid, p.rate_bps))
        limit = queue_limit_packets(p.rate_bps)
        leaf_cmd = f"tc qdisc add dev {iface} parent {classid} handle {leaf}"
        if p.delay_s > 0 and netem:
            limit = _netem_limit(p.rate_bps, p.delay_s)
            cmds.append(_cmd(f"{leaf_cmd} netem delay {round(p.delay_s * 1e6)}us limit {limit}"))
        else:
            if p.delay_s > 0:
                node_delay[p.ip] = p.delay_s
            cmds.append(_cmd(f"{leaf_cmd} pfifo limit {limit}"))
        if ipaddress.ip_address(p.ip).version == 4:
            match = f"protocol ip prio 1 u32 match ip dst {p.ip}/32"
        else:
            match = f"protocol ipv6 prio 2 u32 match ip6 dst {p.ip}/128"
        cmds.append(_cmd(f"tc filter add dev {iface} parent {ROOT_HANDLE} {match} flowid {classid}"))
    return ShapingPlan(cmds, node_delay)


def change_link_commands(
    iface: str,
    classid: str,
    rate_bps: int,
    netem_delay_s: float | None = None,
    slowest_bps: int | None = None,
    *,
    queue_floor: int = 0,
    replace_leaf: bool = False,
) -> list[list[str]]:
    """tc commands that change one peer's shaping in place, on the layout `shaping_commands` built:
    its htb class's rate (`tc class change`) and its leaf queue sized for the new rate, netem with
    `netem_delay_s` where netem holds the link's delay (None: the leaf is a pfifo). Nothing is
    deleted and re-added, so the link is never unshaped. `slowest_bps` (the slowest class once
    changed) re-caps the offload lumps as `shaping_commands` does.

    `queue_floor`: the leaf never holds fewer packets than this (what it held before), so a link
    slowed to a crawl queues what it has rather than dropping it, and TCP carries on when the rate
    comes back instead of backing off for seconds. `replace_leaf`: the leaf changes kind (pfifo to
    netem or back), which `change` cannot do; the class itself is still changed in place."""
    if not iface or any(c.isspace() for c in iface):
        raise ValueError(f"bad interface name {iface!r}")
    if rate_bps <= 0:
        raise ValueError(f"class {classid}: rate must be > 0 bit/s, got {rate_bps}")
    if netem_delay_s is not None and netem_delay_s < 0:
        raise ValueError(f"class {classid}: delay must be >= 0 s, got {netem_delay_s}")
    root, minor = classid.split(":")
    if f"{root}:" != ROOT_HANDLE or not minor or int(minor, 16) < FIRST_PEER_MINOR:
        raise ValueError(f"class {classid} is not a peer's class under {ROOT_HANDLE}")
    leaf = f"tc qdisc {'replace' if replace_leaf else 'change'} dev {iface} parent {classid} handle {minor}:"
    cmds = [_htb_class(iface, classid, rate_bps, verb="change")]
    if netem_delay_s is None:
        cmds.append(_cmd(f"{leaf} pfifo limit {max(queue_limit_packets(rate_bps), queue_floor)}"))
    else:
        limit = max(_netem_limit(rate_bps, netem_delay_s), queue_floor)
        cmds.append(_cmd(f"{leaf} netem delay {round(netem_delay_s * 1e6)}us limit {limit}"))
    if slowest_bps:
        cmds.append(_cmd(f"ip link set dev {iface} gso_max_size {gso_max_size([PeerShape('0.0.0.0', slowest_bps)])}"))
    return cmds


def clear_commands(iface: str) -> list[list[str]]:
    return [["tc", "qdisc", "del", "dev", iface, "root"]]


# --------------------------------------------------------------------------------- run and check


def _prefix(netns: str | None) -> list[str]:
    # netns: run inside a named network namespace (tests; the node itself runs in its own).
    return ["ip", "netns", "exec", netns] if netns else []


def run_tc(cmd: list[str], netns: str | None = None) -> str:
    """Run one command; raise TcError naming it, with tc's stderr, on any failure."""
    full = _prefix(netns) + cmd
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=TC_TIMEOUT_S)
    except FileNotFoundError as e:
        raise TcError(f"`{' '.join(full)}` failed: {e.filename} not found (install iproute2)") from e
    except subprocess.TimeoutExpired as e:
        raise TcError(f"`{' '.join(full)}` timed out after {TC_TIMEOUT_S}s") from e
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or "no message").replace("\n", " | ")
        raise TcError(f"`{' '.join(full)}` failed (exit {r.returncode}): {msg}")
    return r.stdout


def apply(commands: list[list[str]], netns: str | None = None) -> None:
    """Run the commands in order; the first failure stops and raises TcError."""
    for cmd in commands:
        run_tc(cmd, netns)


def apply_batch(commands: list[list[str]], netns: str | None = None) -> str:
    """`apply`, with the tc commands run by one `tc -batch` process instead of one process each: a
    change while traffic flows is applied, and read back with a `show` among them, in a few
    milliseconds. Order is kept; the first failure stops and raises TcError with tc's message.
    Returns what the commands printed."""
    batch: list[list[str]] = []
    out: list[str] = []

    def flush() -> None:
        if not batch:
            return
        full = _prefix(netns) + ["tc", "-batch", "-"]
        text = "".join(" ".join(c[1:]) + "\n" for c in batch)
        try:
            r = subprocess.run(full, input=text, capture_output=True, text=True, timeout=TC_TIMEOUT_S)
        except FileNotFoundError as e:
            raise TcError(f"`{' '.join(full)}` failed: {e.filename} not found (install iproute2)") from e
        except subprocess.TimeoutExpired as e:
            raise TcError(f"`{' '.join(full)}` timed out after {TC_TIMEOUT_S}s") from e
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip() or "no message").replace("\n", " | ")
            raise TcError(f"`tc -batch` of `{'; '.join(' '.join(c) for c in batch)}` failed: {msg}")
        out.append(r.stdout)
        batch.clear()

    for cmd in commands:
        if cmd[0] == "tc":
            batch.append(cmd)
            continue
        flush()
        out.append(run_tc(cmd, netns))
    flush()
    return "".join(out)


def read_back(iface: str, netns: str | None = None) -> str:
    """What the kernel holds now: qdiscs and classes with their counters."""
    qdiscs = run_tc(["tc", "-s", "qdisc", "show", "dev", iface], netns)
    classes = run_tc(["tc", "-s", "class", "show", "dev", iface], netns)
    return qdiscs + classes


_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_CLASS_RE = re.compile(r"^class htb (\S+) .*?\brate (\d+(?:\.\d+)?)([KMGT]?i?)bit\b", re.M | re.I)


_U32_FLOW_RE = re.compile(r"\bflowid (\S+)")
_U32_DST_RE = re.compile(r"^\s*match ([0-9a-f]{8})/ffffffff at 16\b", re.I)


def parse_u32_flows(text: str) -> dict[str, str]:
    """IPv4 destination -> classid, from `tc filter show` output: each u32 rule prints its flowid,
    then the destination it matches as hex at offset 16 of the IP header."""
    out: dict[str, str] = {}
    flow = None
    for line in text.splitlines():
        if m := _U32_FLOW_RE.search(line):
            flow = m.group(1)
        elif (m := _U32_DST_RE.match(line)) and flow is not None:
            out[str(ipaddress.IPv4Address(int(m.group(1), 16)))] = flow
    return out


_CLASS_LOAD_RE = re.compile(
    r"^class htb (\S+) .*?^\s*Sent (\d+) bytes .*?^\s*backlog (\d+(?:\.\d+)?)([KMG]?)b", re.M | re.S
)


def parse_class_load(text: str) -> dict[str, tuple[int, int]]:
    """classid -> (bytes sent, bytes backlogged), from `tc -s class show` output."""
    scale = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}
    out: dict[str, tuple[int, int]] = {}
    for block in re.split(r"(?m)^(?=class )", text):
        m = _CLASS_LOAD_RE.search(block)
        if m:
            out[m.group(1)] = (int(m.group(2)), round(float(m.group(3)) * scale[m.group(4).upper()]))
    return out


def parse_htb_rates(text: str) -> dict[str, int]:
    """classid -> rate in bit/s, from `tc [-s] class show` output (tc prints e.g. `rate 10Mbit`)."""
    return {m.group(1): round(float(m.group(2)) * _UNITS[m.group(3).lower()]) for m in _CLASS_RE.finditer(text)}


def holds_rate(held: int | None, asked: int) -> bool:
    """The kernel keeps rates in bytes/s and tc prints them rounded: 0.1% (or one byte/s) is equal."""
    return held is not None and abs(held - asked) <= max(8, asked * 1e-3)


def verify(iface: str, peers: list[PeerShape], netns: str | None = None) -> dict[str, int]:
    """Check that each peer's htb class holds the rate asked for; return classid -> rate.

    The kernel keeps rates in bytes/s and tc prints them rounded, so allow 0.1% (or one byte/s)."""
    text = read_back(iface, netns)
    rates = parse_htb_rates(text)
    problems = []
    for i, p in enumerate(peers):
        got = rates.get(_classid(i))
        if got is None:
            problems.append(f"class {_classid(i)} for {p.ip} missing")
        elif not holds_rate(got, p.rate_bps):
            problems.append(f"class {_classid(i)} for {p.ip}: rate {got} bit/s, asked {p.rate_bps}")
    if problems:
        raise TcError(f"tc on {iface} does not hold what was set: {'; '.join(problems)}\n{text}")
    return rates


def has_root_qdisc(iface: str, netns: str | None = None) -> bool:
    out = run_tc(["tc", "qdisc", "show", "dev", iface, "root"], netns)
    # Defaults the kernel attaches by itself (noqueue, pfifo_fast, mq...) have handle 0:.
    return any(" root " in ln and not re.search(r"qdisc \S+ 0: ", ln) for ln in out.splitlines())


def shape(iface: str, peers: list[PeerShape], netem: bool | None = None, netns: str | None = None) -> ShapingPlan:
    """Replace whatever root qdisc `iface` has with the shaping for `peers`, then verify it. The tc
    commands run as one `tc -batch` (three per peer: one process each cost a 31-peer node under a
    0.05-CPU quota about 4 s of its start)."""
    if netem is None:
        netem = has_netem(netns)
    plan = shaping_commands(iface, peers, netem)
    if has_root_qdisc(iface, netns):
        apply(clear_commands(iface), netns)
    apply_batch(plan.commands, netns)
    verify(iface, peers, netns)
    return plan


def has_netem(netns: str | None = None) -> bool:
    """Can this kernel attach a netem qdisc?

    Probe for real (needs NET_ADMIN): attach netem to a throwaway veth pair created and deleted
    here, so no live interface is touched. Without permission to probe, fall back to the kernel
    config (/proc/config.gz, /boot/config-*) and the loaded modules.
    """
    name = f"tbnp{uuid.uuid4().hex[:8]}"
    try:
        run_tc(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], netns)
    except TcError:
        return _netem_in_kernel_config()
    try:
        run_tc(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"], netns)
        return True
    except TcError:
        return False
    finally:
        try:
            run_tc(["ip", "link", "del", name], netns)
        except TcError:
            pass  # deleting one end removes both; nothing else to undo


def _netem_in_kernel_config() -> bool:
    try:
        with open("/proc/modules") as f:
            if any(line.startswith("sch_netem ") for line in f):
                return True
    except OSError:
        pass
    text = ""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        try:
            with open(f"/boot/config-{os.uname().release}") as f:
                text = f.read()
        except OSError:
            return False
    return re.search(r"^CONFIG_NET_SCH_NETEM=[ym]$", text, re.M) is not None
