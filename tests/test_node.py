"""Node servers in-process on loopback: load stages, drive frames, check results and timings."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from common import testbed_pb2 as pb
from common.tensors import TensorFrame, from_tensor, to_tensor
from node.server import NodeServer
from tests.node_helpers import drive, load_request, reference, stub, write_stages


@pytest.fixture
def nodes():
    started: dict[str, NodeServer] = {}

    def start(*names: str, **kw) -> dict[str, NodeServer]:
        for n in names:
            started[n] = NodeServer(n, 0, "127.0.0.1", **kw).start()
        return started

    yield start
    for s in started.values():
        s.stop(0.2)


def _load_all(servers: dict[str, NodeServer], stages, assignment, source="src", **kw) -> None:
    addresses = {n: s.address for n, s in servers.items()}
    for name, s in servers.items():
        reply = stub(s.address).Load(load_request(name, stages, assignment, addresses, source, **kw))
        assert reply.ok, reply.error
        assert reply.threads == kw.get("threads", 1)
        assert "CPUExecutionProvider" in reply.providers


def _check_timings(result: TensorFrame, num_stages: int) -> None:
    frame = result.header
    stamps = [t.stage for t in frame.timings]
    assert stamps == list(range(-1, num_stages + 1)), stamps
    seq: list[int] = []
    for t in frame.timings:
        if t.stage == -1:
            seq += [t.recv_ns, t.send_ns]
        elif t.stage == num_stages:
            seq += [t.recv_ns]
        else:
            seq += [t.recv_ns, t.start_ns, t.end_ns, t.send_ns]
            assert t.bytes_out > 0
    assert all(a > 0 for a in seq)
    assert seq == sorted(seq), seq
    assert frame.sent_ns <= seq[0]


def test_three_nodes_match_whole_model(nodes, tmp_path):
    stages = write_stages(tmp_path)
    servers = nodes("src", "a", "b")
    _load_all(servers, stages, ["src", "a", "b"])
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 4)).astype(np.float32) for _ in range(20)]
    results = drive(servers["src"].address, xs)
    assert [r.header.request_id for r in results] == list(range(20))
    for x, r in zip(xs, results, strict=True):
        assert r.header.error == ""
        out = r.arrays
        assert list(out) == ["y"]  # only the forward set comes home
        np.testing.assert_allclose(out["y"], reference(x), rtol=1e-5, atol=1e-5)
        _check_timings(r, 3)
        assert [t.device for t in r.header.timings] == ["src", "src", "a", "b", "src"]
    st = stub(servers["a"].address).Stats(pb.Empty())
    assert st.frames_in == 20 and st.frames_out == 20 and st.bytes_in > 0 and st.peak_rss_bytes >= st.rss_bytes > 0
    assert stub(servers["src"].address).Health(pb.Empty()).loaded


def test_local_routing_and_bare_source(nodes, tmp_path):
    """A bare source (no stage) and one device running two consecutive stages."""
    stages = write_stages(tmp_path)
    servers = nodes("src", "a", "b")
    _load_all(servers, stages, ["a", "a", "b"])
    xs = [np.full((1, 4), i, np.float32) for i in range(6)]
    results = drive(servers["src"].address, xs)
    for x, r in zip(xs, results, strict=True):
        assert r.header.error == ""
        np.testing.assert_allclose(r.arrays["y"], reference(x), rtol=1e-5, atol=1e-5)
        _check_timings(r, 3)
        assert [t.device for t in r.header.timings] == ["src", "a", "a", "b", "src"]


def test_reload_replaces(nodes, tmp_path):
    stages = write_stages(tmp_path)
    servers = nodes("src", "a", "b")
    _load_all(servers, stages, ["src", "a", "b"])
    _load_all(servers, stages, ["b", "a", "src"])
    x = np.ones((1, 4), np.float32)
    (r,) = drive(servers["src"].address, [x])
    assert r.header.error == ""
    assert [t.device for t in r.header.timings] == ["src", "b", "a", "src", "src"]
    np.testing.assert_allclose(r.arrays["y"], reference(x), rtol=1e-5, atol=1e-5)


def test_load_errors_do_not_crash(nodes, tmp_path):
    stages = write_stages(tmp_path)
    servers = nodes("src")
    s = stub(servers["src"].address)
    bad = [dict(stages[0], model=str(tmp_path / "missing.onnx"))]
    reply = s.Load(load_request("src", bad, ["src"], {"src": servers["src"].address}, "src"))
    assert not reply.ok and "missing.onnx" in reply.error
    reply = s.Load(load_request("src", stages, ["src", "nowhere", "src"], {"src": "x"}, "src"))
    assert not reply.ok and "nowhere" in reply.error
    reply = s.Load(pb.LoadRequest(device="other", num_stages=1, source_device="src"))
    assert not reply.ok
    assert s.Health(pb.Empty()).status == "idle"


def test_stage_exception_comes_home_as_error(nodes, tmp_path):
    stages = write_stages(tmp_path)
    servers = nodes("src", "a", "b")
    _load_all(servers, stages, ["src", "a", "b"])
    good = np.ones((1, 4), np.float32)
    wrong = np.ones((1, 5), np.float32)  # stage 0 expects width 4: ORT raises
    results = drive(servers["src"].address, [good, wrong, good])
    assert [r.header.error == "" for r in results] == [True, False, True]
    assert "stage 0 on src" in results[1].header.error
    assert len(results[1].arrays) == 0


def test_unreachable_peer_errors_frames(nodes, tmp_path):
    stages = write_stages(tmp_path)
    servers = nodes("src", connect_timeout_s=0.5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    addresses = {"src": servers["src"].address, "a": dead}
    reply = stub(servers["src"].address).Load(load_request("src", stages, ["a", "a", "a"], addresses, "src"))
    assert reply.ok
    results = drive(servers["src"].address, [np.ones((1, 4), np.float32)] * 3, timeout=20)
    assert len(results) == 3
    assert all("unreachable" in r.header.error for r in results)


def test_frame_tensor_roundtrip():
    for dt in (np.float32, np.int64, np.float16, np.bool_):
        a = (np.arange(24).reshape(2, 3, 4) % 3).astype(dt)
        b = from_tensor(to_tensor("t", a))
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_main_starts_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "--device", "dev1", "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("node dev1 listening on 127.0.0.1:"), line
        port = int(line.strip().rsplit(":", 1)[1])
        assert stub(f"127.0.0.1:{port}").Health(pb.Empty(), timeout=5).device == "dev1"
        t0 = time.time()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert time.time() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stage_threads_and_spinning(tmp_path):
    from node.resources import Limits
    from node.stage import Stage, StageConfig

    stages = write_stages(tmp_path)
    cfg = StageConfig(index=0, model_path=stages[0]["model"], outputs=["h1"])
    s = Stage(cfg, threads=0, limits=Limits(cpu_quota=0.5, cores=2, memory_limit=None))
    assert (s.threads, s.spinning) == (1, False)
    s = Stage(cfg, threads=0, limits=Limits(cpu_quota=None, cores=2, memory_limit=None))
    assert (s.threads, s.spinning) == (2, True)
    s = Stage(cfg, threads=1, limits=Limits(cpu_quota=None, cores=2, memory_limit=None))
    assert (s.threads, s.spinning) == (1, False)
    out = s.run({"x": np.ones((3, 4), np.float32), "unused": np.zeros(1)})
    assert out["h1"].shape == (3, 8)
    with pytest.raises(ValueError, match="no output"):
        Stage(StageConfig(index=0, model_path=stages[0]["model"], outputs=["nope"]), threads=1)


def test_serialize_and_deserialize_stamped_for_a_big_tensor(nodes, tmp_path):
    """Every hop's sender stamps serialize_ns on its record and the receiver deserialize_ns on
    its own; stages on one device (no link) stamp neither. 4 MiB: a chunked frame."""
    stages = write_stages(tmp_path)
    servers = nodes("src", "a", "b")
    _load_all(servers, stages, ["src", "a", "b"])
    x = np.random.default_rng(3).standard_normal((1 << 18, 4)).astype(np.float32)
    results = drive(servers["src"].address, [x, x[:2]])
    for r in results:
        assert r.header.error == ""
        _check_timings(r, 3)
        t = {s.stage: s for s in r.header.timings}
        assert t[-1].serialize_ns == 0 and t[0].deserialize_ns == 0  # src -> src: no link
        for sender, receiver in ((0, 1), (1, 2), (2, 3)):
            assert t[sender].serialize_ns > 0, sender
            assert t[receiver].deserialize_ns > 0, receiver
            assert t[sender].serialize_ns < t[receiver].recv_ns - t[sender].send_ns
    big, small = ({s.stage: s for s in r.header.timings} for r in results)
    assert big[0].bytes_out > 4 << 20
    assert big[0].serialize_ns > small[0].serialize_ns  # the payload's copy is in it


def test_encode_with_on_payload_makes_the_same_messages():
    from common.tensors import FrameReader, encode_messages

    a = np.arange(300_000, dtype=np.float32)
    for arrays in ({"a": a, "b": a[:7]}, {"a": a[:10]}, {}):
        plain = list(encode_messages(TensorFrame(pb.Frame(request_id=4), dict(arrays)), 256 << 10))
        seen = []

        def hook(header, elapsed_ns, size, seen=seen):
            seen.append((elapsed_ns, size))
            header.sent_ns = 77

        frame = TensorFrame(pb.Frame(request_id=4), dict(arrays))
        hooked = list(encode_messages(frame, 256 << 10, on_payload=hook))
        assert len(hooked) == len(plain) and hooked[1:] == plain[1:]
        assert len(seen) == 1 and seen[0][0] > 0
        reader = FrameReader()
        got = [f for m in hooked if (f := reader.feed(m)) is not None]
        assert len(got) == 1 and got[0].header.sent_ns == 77 and got[0].decode_ns > 0
        assert all(np.array_equal(got[0].arrays[k], v) for k, v in arrays.items())
