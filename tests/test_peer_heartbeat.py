"""A node notices a silent neighbour by itself: its sender's heartbeat fails the frames it holds
for the peer at once, flagged `lost`, instead of waiting for gRPC; and a node says which
requests it holds (StatsReply.held_ids)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from common import testbed_pb2 as pb
from common.tensors import TensorFrame
from node.links import PeerSender
from node.server import NodeServer
from tests.node_helpers import drive, identity_stage, load_request, stall_once, stub, write_stages

WIDTH = 150_000  # float32: 600 KB per frame
RATE_BPS = 8_000_000  # 0.6 s a frame on the link: frames wait at the sender


@pytest.fixture
def frozen_peer(tmp_path):
    """Node `a` in a process of its own, loaded with an identity stage that answers to `src`;
    yields (process, address). SIGSTOP freezes it with its connections open: silence, not a
    refusal."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "--device", "a", "--port", "0", "--host", "127.0.0.1", "--log-level", "error"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("node a listening on 127.0.0.1:"), line
        address = line.strip().rsplit(" ", 1)[1]
        yield proc, address
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)


def _load_pair(src: NodeServer, a_address: str, model: str) -> None:
    stage = pb.StageSpec(index=0, model_path=model, inputs=["x"], outputs=["y"], forward=["y"], next_device="src")
    ra = stub(a_address).Load(
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
            peers=[pb.Peer(device="a", address=a_address, rate_bps=RATE_BPS)],
        )
    )
    assert ra.ok and rs.ok, (ra.error, rs.error)


def _drive_timed(address: str, x: np.ndarray, n: int, timeout: float) -> list[tuple[TensorFrame, float]]:
    """n frames on one Drive stream; each result with the monotonic time it came home."""
    frames = (TensorFrame(pb.Frame(request_id=i, stage=0, sent_ns=time.time_ns()), {"x": x}) for i in range(n))
    return [(r, time.monotonic()) for r in stub(address).Drive(frames, timeout=timeout)]


def test_a_silent_peer_fails_the_frames_held_for_it_at_once(frozen_peer, tmp_path):
    """The frames the sender holds (paced or queued) and those it handed to the wire while the
    peer was silent (cancelling the stream discards them) come home `lost` within a second;
    without the heartbeat they would wait for keepalive (30 s + 10 s): the connection stays open."""
    proc, a_address = frozen_peer
    src = NodeServer("src").start()
    try:
        _load_pair(src, a_address, identity_stage(tmp_path, WIDTH))
        x = np.ones((1, WIDTH), np.float32)
        assert drive(src.address, [x])[0].header.error == ""  # the link's stream is open
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        wake = threading.Timer(3.0, os.kill, (proc.pid, signal.SIGCONT))
        wake.start()
        results = _drive_timed(src.address, x, 4, timeout=30)
        wake.join()
        assert sorted(r.header.request_id for r, _ in results) == [0, 1, 2, 3]
        came = [t - t0 for _, t in results]
        assert all(r.header.lost for r, _ in results) and max(came) < 1.5, came
        assert all("peer a at" in r.header.error and "lost" in r.header.error for r, _ in results)
        assert src.servicer.held_ids() == []
        deadline = time.monotonic() + 10
        while src.servicer._pipe.senders["a"].lost and time.monotonic() < deadline:
            time.sleep(0.05)  # the peer answers again: the link carries frames again
        (ok,) = drive(src.address, [x], timeout=20)
        assert ok.header.error == "" and not ok.header.lost
    finally:
        src.stop(0.2)


def failed_into(failed: list[tuple[TensorFrame, str]]):
    return lambda frame, msg: failed.append((frame, msg))


def test_without_the_heartbeat_a_silent_peer_holds_the_frames(frozen_peer, tmp_path):
    """The baseline the heartbeat beats: gRPC alone fails nothing while the connection stays open."""
    proc, a_address = frozen_peer
    for heartbeat_s in (0.0, 0.2):
        failed: list[tuple[TensorFrame, str]] = []
        sender = PeerSender(a_address, RATE_BPS, name="a", heartbeat_s=heartbeat_s, on_failed=failed_into(failed))
        try:
            assert stub(a_address).Health(pb.Empty(), timeout=5).device == "a"
            os.kill(proc.pid, signal.SIGSTOP)
            for i in range(4):
                sender.send(TensorFrame(pb.Frame(request_id=i, probe=True), {"x": np.ones((1, WIDTH), np.float32)}))
            time.sleep(1.5)
            if heartbeat_s == 0:
                assert failed == [] and sender.busy  # still pacing frames for the frozen peer
            else:
                ids = [f.header.request_id for f, _ in failed]
                assert ids and ids[-1] == 3 and all(f.header.lost and "lost" in m for f, m in failed), failed
                assert not sender.busy and sender.lost
                sender.send(TensorFrame(pb.Frame(request_id=9, probe=True), {"x": np.ones(4, np.float32)}))
                assert failed[-1][0].header.request_id == 9  # a lost peer's frames fail at once
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            sender.close(timeout_s=2.0)


def test_held_ids_say_which_requests_a_node_holds(tmp_path):
    stages = write_stages(tmp_path)
    servers = {n: NodeServer(n).start() for n in ("src", "a")}
    try:
        addresses = {n: s.address for n, s in servers.items()}
        assignment = ["src", "a", "a"]
        for name, s in servers.items():
            assert stub(s.address).Load(load_request(name, stages, assignment, addresses, "src")).ok
        x = np.ones((1, 4), np.float32)
        for device, stage in (("a", 1), ("src", 0)):
            stall_once(servers[device], stage, 0, 1.0)
            out: list = []
            t = threading.Thread(target=lambda out=out: out.extend(drive(servers["src"].address, [x] * 2)))
            t.start()
            time.sleep(0.5)  # request 0 stalls in `stage` on `device`; request 1 queues behind it
            held = {n: set(stub(s.address).Stats(pb.Empty(), timeout=5).held_ids) for n, s in servers.items()}
            t.join(timeout=10)
            assert held[device] == {0, 1}, held
            other = "src" if device == "a" else "a"
            assert held[other] == set(), held
            assert [r.header.error for r in out] == ["", ""]
            assert all(s.servicer.held_ids() == [] for s in servers.values())
    finally:
        for s in servers.values():
            s.stop(0.2)
