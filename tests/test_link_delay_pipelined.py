"""A node-paced link's delay is propagation: frames are in flight together, so a long delay
adds to each frame's latency but never slows the link's rate."""

from __future__ import annotations

import numpy as np
import pytest

from common import testbed_pb2 as pb
from node.server import NodeServer
from tests.node_helpers import drive, identity_stage, stub

WIDTH = 2_500  # float32: 10 kB a frame
RATE_BPS = 1e6  # 80 ms of transmission a frame
DELAY_S = 0.300  # almost four frames' transmission time in flight
FRAMES = 10


@pytest.fixture
def slow_far_link(tmp_path):
    """src (the source) -> a (an identity stage) -> src; only src -> a is shaped, by src's node."""
    src, a = NodeServer("src").start(), NodeServer("a").start()
    stage = pb.StageSpec(
        index=0,
        model_path=identity_stage(tmp_path, WIDTH),
        inputs=["x"],
        outputs=["y"],
        forward=["y"],
        next_device="src",
    )
    common = dict(num_stages=1, source_device="src", first_device="a", threads=1)
    ra = stub(a.address).Load(
        pb.LoadRequest(device="a", stages=[stage], peers=[pb.Peer(device="src", address=src.address)], **common)
    )
    rs = stub(src.address).Load(
        pb.LoadRequest(
            device="src",
            peers=[pb.Peer(device="a", address=a.address, rate_bps=int(RATE_BPS), delay_s=DELAY_S)],
            **common,
        )
    )
    assert ra.ok and rs.ok, (ra.error, rs.error)
    yield src.address
    src.stop(0.2)
    a.stop(0.2)


def test_long_delay_does_not_slow_back_to_back_small_frames(slow_far_link):
    frames = drive(slow_far_link, [np.ones((1, WIDTH), np.float32)] * FRAMES, timeout=60)
    assert all(f.header.error == "" for f in frames)
    stamps = [{t.stage: t for t in f.header.timings} for f in frames]
    sent = [t[-1].send_ns for t in stamps]
    arrived = [t[0].recv_ns for t in stamps]  # at a, after the link released the frame
    nbytes = stamps[0][-1].bytes_out
    # Frames queue only behind each other's transmission, so they leave the link one
    # transmission time apart: the rate over frame size, whatever the delay. Were the sender busy
    # until each frame's delay had run out, they would arrive (80 + 300) ms apart: 4.7x slower.
    per_frame_s = nbytes * 8 / RATE_BPS
    spacing_s = (arrived[-1] - arrived[0]) / 1e9 / (FRAMES - 1)
    assert spacing_s == pytest.approx(per_frame_s, rel=0.10), (spacing_s, per_frame_s)
    # and each frame still spent at least its transmission and the delay on the way
    assert all((r - s) / 1e9 >= per_frame_s + DELAY_S for s, r in zip(sent, arrived, strict=True))
