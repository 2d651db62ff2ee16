"""Link emulation in the node: a PeerSender paces by bytes and the receiver honours the delay."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from common import testbed_pb2 as pb
from common.tensors import TensorFrame
from node.links import sleep_until
from node.server import NodeServer
from tests.node_helpers import drive, identity_stage, stub

WIDTH = 150_000  # float32: 600 KB per frame


@pytest.fixture
def link(tmp_path):
    """src (bare source) -> a (identity stage) -> src; the src->a link is configurable."""
    model = identity_stage(tmp_path, WIDTH)
    src = NodeServer("src").start()
    a = NodeServer("a").start()

    def configure(rate_bps: float, delay_s: float) -> str:
        stage = pb.StageSpec(index=0, model_path=model, inputs=["x"], outputs=["y"], forward=["y"], next_device="src")
        ra = stub(a.address).Load(
            pb.LoadRequest(
                device="a",
                num_stages=1,
                source_device="src",
                first_device="a",
                threads=1,
                stages=[stage],
                peers=[pb.Peer(device="src", address=src.address)],
            )
        )
        rs = stub(src.address).Load(
            pb.LoadRequest(
                device="src",
                num_stages=1,
                source_device="src",
                first_device="a",
                threads=1,
                peers=[pb.Peer(device="a", address=a.address, rate_bps=int(rate_bps), delay_s=delay_s)],
            )
        )
        assert ra.ok and rs.ok, (ra.error, rs.error)
        return src.address

    yield configure
    src.stop(0.2)
    a.stop(0.2)


def _hop(frame: TensorFrame) -> tuple[int, int, int]:
    """(send at src, receive at a, bytes) of the src -> a hop."""
    t = {x.stage: x for x in frame.header.timings}
    return t[-1].send_ns, t[0].recv_ns, t[-1].bytes_out


def test_rate_of_back_to_back_frames(link):
    address = link(10e6, 0.020)
    # one frame first opens the link's stream (a connection set up on a busy host can take tens
    # of ms), so that the six below find the link connected and idle
    drive(address, [np.ones((1, WIDTH), np.float32)], timeout=30)
    frames = drive(address, [np.ones((1, WIDTH), np.float32)] * 6, timeout=30)
    assert all(f.header.error == "" for f in frames)
    hops = [_hop(f) for f in frames]
    recv = [h[1] for h in hops]
    achieved = sum(h[2] for h in hops[1:]) * 8 / ((recv[-1] - recv[0]) / 1e9)
    assert achieved == pytest.approx(10e6, rel=0.10), achieved
    # the first frame found the link idle: transmission (0.48 s) plus the 20 ms delay. The
    # sender's own stamp says when it let the frame out (deliver_after_ns, carried home in the
    # header), so the receiver's wake-up on a busy host does not count against the sender
    send0, recv0, nbytes = hops[0]
    expected = nbytes * 8 / 10e6 + 0.020
    due0 = frames[0].header.deliver_after_ns
    assert (due0 - send0) / 1e9 == pytest.approx(expected, abs=0.015)
    # the receiver held every frame until its due time, and released it on time: host noise only
    # makes it later, so the least late of the six frames shows what the node itself adds
    late_s = [(_hop(f)[1] - f.header.deliver_after_ns) / 1e9 for f in frames]
    assert min(late_s) >= 0 and min(late_s) < 0.005, late_s
    assert (recv0 - send0) / 1e9 >= expected


@pytest.mark.parametrize("rate_bps", [0, 50e6])
def test_delay_adds_to_each_frame(link, rate_bps):
    address = link(rate_bps, 0.020)
    lat = []
    for _ in range(4):  # one at a time: the link is idle for each frame
        (f,) = drive(address, [np.ones((1, WIDTH), np.float32)])
        assert f.header.error == ""
        send, recv, nbytes = _hop(f)
        lat.append((recv - send) / 1e9 - (nbytes * 8 / rate_bps if rate_bps else 0.0))
    # host noise only adds time: every frame got the delay, and the least delayed one shows
    # what the link itself adds
    assert min(lat) >= 0.020 and min(lat) <= 0.030, lat


def test_unshaped_link_adds_little(link):
    address = link(0, 0.0)
    lat = []
    for _ in range(5):
        (f,) = drive(address, [np.ones((1, WIDTH), np.float32)])
        send, recv, _ = _hop(f)
        lat.append((recv - send) / 1e9)
    assert statistics.median(lat) < 0.010, lat


def test_sleep_until_is_precise():
    errs = []
    for _ in range(20):
        target = time.time_ns() + 3_000_000
        sleep_until(target)
        errs.append(time.time_ns() - target)
    assert min(errs) >= 0
    assert statistics.median(errs) < 500_000, errs


def test_no_spin_under_a_fractional_cpu_quota(monkeypatch):
    """Spinning the last millisecond spends a small quota (a CFS period late once it runs out):
    under one, the wait spins a fifth of that, and still never releases early."""
    from node import links, resources

    for quota, spin in ((None, links._SPIN_NS), (2.0, links._SPIN_NS), (0.05, links._QUOTA_SPIN_NS)):
        monkeypatch.setattr(resources, "cpu_quota", lambda q=quota: q)
        monkeypatch.setattr(links, "_spin_cache", (-links._QUOTA_TTL_S, -1))
        assert links._spin_ns() == spin
    errs = []
    for _ in range(10):
        target = time.time_ns() + 3_000_000
        sleep_until(target)
        errs.append(time.time_ns() - target)
    assert min(errs) >= 0 and statistics.median(errs) < 1_000_000, errs
