"""node.tc: command building (pure) and real shaping between two network namespaces.

The namespace tests create their own pair of namespaces joined by a veth pair with addresses in a
private /30 that exists only inside them, so no traffic touches the host's interfaces; the
finaliser deletes them even when a test fails. They need root and `ip netns`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from node import tc
from node.tc import PeerShape

A_IP, B_IP = "10.254.254.1", "10.254.254.2"  # private /30, inside the test namespaces only


# ------------------------------------------------------------------------------- pure building


def _flat(cmds):
    return [" ".join(c) for c in cmds]


def test_commands_htb_per_peer_with_u32_and_default_class():
    plan = tc.shaping_commands(
        "eth0", [PeerShape("10.0.0.2", 10_000_000), PeerShape("10.0.0.3", 50_000_000)], netem=False
    )
    text = _flat(plan.commands)
    # offload lumps capped first: ~2 ms of the slowest link, 2500 bytes at 10 mbit
    assert text[0] == "ip link set dev eth0 gso_max_size 2500"
    assert tc.gso_max_size([PeerShape("10.0.0.2", 100_000_000)]) == 25_000
    assert tc.gso_max_size([PeerShape("10.0.0.2", 10_000_000_000)]) == 65536
    assert text[1] == "tc qdisc add dev eth0 root handle 1: htb default 1"
    assert any("classid 1:10 htb rate 10000000bit ceil 10000000bit" in c for c in text)
    assert any("classid 1:11 htb rate 50000000bit ceil 50000000bit" in c for c in text)
    assert any("match ip dst 10.0.0.2/32 flowid 1:10" in c for c in text)
    assert any("match ip dst 10.0.0.3/32 flowid 1:11" in c for c in text)
    # every class has an explicit leaf queue (Docker veths have txqueuelen 0)
    assert sum(" pfifo limit " in c for c in text) == 3
    assert plan.node_delay_s == {}


def test_delay_goes_to_netem_where_available_else_to_the_node():
    peers = [PeerShape("10.0.0.2", 20_000_000, 0.010), PeerShape("10.0.0.3", 20_000_000, 0.0)]
    with_netem = tc.shaping_commands("eth0", peers, netem=True)
    assert any("parent 1:10 handle 10: netem delay 10000us" in c for c in _flat(with_netem.commands))
    assert with_netem.node_delay_s == {}
    without = tc.shaping_commands("eth0", peers, netem=False)
    assert not any("netem" in c for c in _flat(without.commands))
    assert without.node_delay_s == {"10.0.0.2": 0.010}


def test_burst_is_about_a_millisecond_but_a_few_mtus_at_least():
    assert tc.burst_bytes(10_000_000) == 4 * tc.MTU_FRAME  # 1 ms would be 1250 B: too small
    assert tc.burst_bytes(1_000_000_000) == 125_000


def test_bad_peers_are_refused():
    for bad in (PeerShape("10.0.0.2", 0), PeerShape("10.0.0.2", 1000, -1.0), PeerShape("not-an-ip", 1000)):
        with pytest.raises(ValueError):
            tc.shaping_commands("eth0", [bad], netem=False)
    with pytest.raises(ValueError, match="twice"):
        tc.shaping_commands("eth0", [PeerShape("10.0.0.2", 1000)] * 2, netem=False)


def test_parse_htb_rates_reads_tc_units():
    text = (
        "class htb 1:1 root leaf 2: prio 0 rate 10Gbit ceil 10Gbit burst 1250000b cburst 1250000b \n"
        " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0)\n"
        "class htb 1:10 root leaf 10: prio 0 rate 10Mbit ceil 10Mbit burst 6056b cburst 6056b \n"
        "class htb 1:11 root leaf 11: prio 0 rate 1500Kbit ceil 1500Kbit burst 6056b cburst 6056b \n"
    )
    assert tc.parse_htb_rates(text) == {"1:1": 10**10, "1:10": 10**7, "1:11": 1_500_000}


def test_change_link_commands_change_in_place():
    text = _flat(tc.change_link_commands("eth0", "1:11", 20_000_000, slowest_bps=10_000_000))
    assert text[0].startswith("tc class change dev eth0 parent 1: classid 1:11 htb rate 20000000bit ceil 20000000bit")
    limit = tc.queue_limit_packets(20_000_000)
    assert text[1] == f"tc qdisc change dev eth0 parent 1:11 handle 11: pfifo limit {limit}"
    assert text[2] == "ip link set dev eth0 gso_max_size 2500"  # lumps of ~2 ms of the slowest class
    assert not any(" del " in c or " add " in c for c in text)  # never an unshaped moment
    netem = _flat(tc.change_link_commands("eth0", "1:10", 10_000_000, netem_delay_s=0.04))
    assert netem[1].startswith("tc qdisc change dev eth0 parent 1:10 handle 10: netem delay 40000us limit ")
    assert len(netem) == 2
    for bad in (("eth0", "1:10", 0), ("eth0", "1:1", 10_000), ("eth 0", "1:10", 10_000), ("eth0", "2:10", 10_000)):
        with pytest.raises(ValueError):
            tc.change_link_commands(*bad)


def test_parse_u32_flows_maps_each_destination_to_its_class():
    head = "filter parent 1: protocol ip pref 1 u32 chain 0"
    text = (
        f"{head} \n"
        f"{head} fh 800: ht divisor 1 \n"
        f"{head} fh 800::800 order 2048 key ht 800 bkt 0 flowid 1:10 not_in_hw \n"
        "  match 0ad5000b/ffffffff at 16\n"
        f"{head} fh 800::801 order 2049 key ht 800 bkt 0 flowid 1:11 not_in_hw \n"
        "  match 0ad5000c/ffffffff at 16\n"
    )
    assert tc.parse_u32_flows(text) == {"10.213.0.11": "1:10", "10.213.0.12": "1:11"}


# ------------------------------------------------------------------------ real tc in namespaces


def _sh(*cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and run tc"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "iproute2 (ip, tc) not installed"
    probe = f"tb-test-probe-{uuid.uuid4().hex[:6]}"
    try:
        _sh("ip", "netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as e:
        return f"`ip netns add` does not work here: {getattr(e, 'stderr', '') or e}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


@pytest.fixture()
def netns_pair():
    """Namespaces A and B joined by veth va<->vb (txqueuelen 0 like Docker's); yields (A, B)."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    a, b = f"tb-test-{tag}-a", f"tb-test-{tag}-b"
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        # Created inside A with its peer moved straight into B: nothing appears in the host netns.
        _sh(*f"ip -n {a} link add va txqueuelen 0 type veth peer name vb netns {b}".split())
        _sh("ip", "-n", b, "link", "set", "vb", "txqueuelen", "0")
        _sh("ip", "-n", a, "addr", "add", f"{A_IP}/30", "dev", "va")
        _sh("ip", "-n", b, "addr", "add", f"{B_IP}/30", "dev", "vb")
        for ns, dev in ((a, "va"), (b, "vb")):
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):  # deleting a namespace removes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20)
n = 0; t0 = t1 = None
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    now = time.monotonic()
    if t0 is None:
        t0 = now
    n += len(b); t1 = now
print(n, t1 - t0, flush=True)
"""

SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 5201), timeout=20)
s.sendall(b"\0" * int(sys.argv[2])); s.shutdown(socket.SHUT_WR)
s.recv(1)  # wait for the receiver to close: all bytes delivered
"""


def _transfer_rate_bps(a: str, b: str, nbytes: int) -> float:
    """Send nbytes over TCP from namespace a to b; goodput measured at the receiver."""
    rx = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c", RECEIVER, B_IP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        line = rx.stdout.readline()  # the receiver prints "ready" once listening
        assert line.strip() == "ready" and time.monotonic() < deadline, rx.stderr.read()
        subprocess.run(
            ["ip", "netns", "exec", a, sys.executable, "-c", SENDER, B_IP, str(nbytes)],
            check=True,
            timeout=30,
            capture_output=True,
        )
        out, err = rx.communicate(timeout=30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait(timeout=5)
    got, seconds = out.split()
    assert int(got) == nbytes, err
    return int(got) * 8 / float(seconds)


def test_htb_shapes_tcp_to_the_configured_rate(netns_pair):
    a, b = netns_pair
    peers = [PeerShape(B_IP, 10_000_000, delay_s=0.0)]
    tc.shape("va", peers, netem=False, netns=a)
    rate = _transfer_rate_bps(a, b, 3_000_000)
    # TCP/IP/Ethernet headers take ~4% of the shaped bytes, so goodput sits a little below 10 Mbit/s.
    assert abs(rate - 10e6) / 10e6 < 0.10, f"measured {rate / 1e6:.2f} Mbit/s for a 10 Mbit/s class"


def test_read_back_shows_the_class_and_reshaping_replaces_it(netns_pair):
    a, _ = netns_pair
    tc.shape("va", [PeerShape(B_IP, 10_000_000)], netem=False, netns=a)
    text = tc.read_back("va", netns=a)
    assert "qdisc htb 1: root" in text
    assert "class htb 1:10" in text and "rate 10Mbit ceil 10Mbit" in text
    # shaping again clears the old tree first instead of failing on "File exists"
    tc.shape("va", [PeerShape(B_IP, 25_000_000)], netem=False, netns=a)
    assert tc.parse_htb_rates(tc.read_back("va", netns=a))["1:10"] == 25_000_000


def test_a_class_changed_in_place_keeps_its_counters_and_shapes_at_the_new_rate(netns_pair):
    a, b = netns_pair
    tc.shape("va", [PeerShape(B_IP, 10_000_000)], netem=False, netns=a)
    _transfer_rate_bps(a, b, 500_000)
    flows = tc.parse_u32_flows(tc.run_tc(["tc", "filter", "show", "dev", "va"], netns=a))
    assert flows == {B_IP: "1:10"}
    sent = int(tc.read_back("va", netns=a).split("class htb 1:10")[1].split("Sent ")[1].split()[0])
    tc.apply(tc.change_link_commands("va", "1:10", 20_000_000, slowest_bps=20_000_000), netns=a)
    text = tc.read_back("va", netns=a)
    assert tc.parse_htb_rates(text)["1:10"] == 20_000_000
    assert int(text.split("class htb 1:10")[1].split("Sent ")[1].split()[0]) >= sent  # not deleted and re-added
    rate = _transfer_rate_bps(a, b, 3_000_000)
    assert abs(rate - 20e6) / 20e6 < 0.10, f"measured {rate / 1e6:.2f} Mbit/s after changing the class to 20 Mbit/s"


def test_a_failing_command_raises_with_tcs_message(netns_pair):
    a, _ = netns_pair
    with pytest.raises(tc.TcError) as e:
        tc.apply([["tc", "qdisc", "add", "dev", "tbnosuchdev0", "root", "htb"]], netns=a)
    assert "tc qdisc add dev tbnosuchdev0 root htb" in str(e.value)
    assert "Cannot find device" in str(e.value)
    with pytest.raises(tc.TcError, match="exit"):
        tc.apply(["tc class add dev va parent 1: classid 1:10 htb rate fastbit".split()], netns=a)


def test_has_netem_probes_without_touching_existing_interfaces(netns_pair):
    a, _ = netns_pair
    before = _sh("ip", "-n", a, "-o", "link").stdout.count("\n")
    assert isinstance(tc.has_netem(netns=a), bool)  # False on a kernel without sch_netem
    assert _sh("ip", "-n", a, "-o", "link").stdout.count("\n") == before
