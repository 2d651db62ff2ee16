"""Stage files sent to a node over gRPC (Put/Has): a real node server in this process, its own
file store in a temporary folder, the files loaded and run from there."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from common import testbed_pb2 as pb
from common.ort_session import open_session
from node.server import NodeServer
from orchestrator.driving.client import NodeClient, NodeError
from orchestrator.partition.graph import load_graph
from orchestrator.partition.stage_files import write_stages as cut_stages
from orchestrator.partition.weights_store import WEIGHTS_FILE, WeightsStore
from orchestrator.runtimes.node_files import NodeFiles, prepare, send_stage_file
from tests.node_helpers import drive, load_request, reference, write_stages


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "node-files"
    monkeypatch.setenv("EDGE_FILES_DIR", str(folder))
    return folder


@pytest.fixture
def node(store_dir):
    server = NodeServer("a", 0, "127.0.0.1").start()
    client = NodeClient("a", server.address)
    yield server, client
    client.close()
    server.stop(0.2)


def _held(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _external(path: str | Path) -> dict[str, tuple[str, int, int]]:
    m = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            out[t.name] = (info["location"], int(info["offset"]), int(info["length"]))
    return out


def _load_alone(client: NodeClient, stages: list[dict]) -> None:
    """All stages on node "a", which is also the source."""
    client.load(load_request("a", stages, ["a"] * len(stages), {"a": client.address}, "a"))


def test_stage_sent_with_only_its_weights_runs_as_the_model(node, store_dir, tiny_vit, tmp_path):
    server, client = node
    g = load_graph(tiny_vit)
    files = cut_stages(g, [g.n // 2], tmp_path / "plan", store=WeightsStore(tmp_path / "store"))
    weights = (tmp_path / "plan" / WEIGHTS_FILE).stat().st_size
    stages, remote = [], []
    for k, f in enumerate(files):
        local = tmp_path / "plan" / f.model
        path = send_stage_file(client, local)
        assert Path(path).parent == store_dir.resolve() and path.endswith(f"-stage_{k}.onnx")
        refs = _external(path)
        assert refs and set(refs) == set(_external(local))
        (location,) = {loc for loc, _, _ in refs.values()}
        held = store_dir / location
        # only the byte ranges this stage references (page-aligned), not the model's weights.bin
        assert f.weights_bytes <= held.stat().st_size < f.weights_bytes + 4096 * len(refs)
        assert held.stat().st_size < weights
        # the same bytes, at the rewritten offsets
        src = (tmp_path / "plan" / WEIGHTS_FILE).read_bytes()
        dst = held.read_bytes()
        for name, (_, off, n) in refs.items():
            _, src_off, src_n = _external(local)[name]
            assert src_n == n and dst[off : off + n] == src[src_off : src_off + n]
        forward = files[k + 1].inputs if k + 1 < len(files) else f.outputs
        stages.append({"index": k, "model": path, "inputs": f.inputs, "outputs": f.outputs, "forward": forward})
        remote.append(held)
    assert sum(p.stat().st_size for p in remote) < weights + 4096 * 64
    _load_alone(client, stages)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (result,) = drive(server.address, [x], name="pixel_values")
    assert result.header.error == ""
    want = open_session(str(tiny_vit)).run(["logits"], {"pixel_values": x})[0]
    np.testing.assert_allclose(result.arrays["logits"], want, rtol=1e-5, atol=1e-5)


def test_mixed_stages_loaded_from_the_store(node, store_dir, tmp_path):
    """Self-contained stages go as they are, the one with external data with its weights."""
    server, client = node
    stages = write_stages(tmp_path)
    for st in stages:
        st["model"] = send_stage_file(client, st["model"])
    assert len(_held(store_dir)) == 4  # three graphs and one weights file
    assert (store_dir / Path(stages[0]["model"]).name).read_bytes() == (tmp_path / "stage_0.onnx").read_bytes()
    _load_alone(client, stages)
    xs = [np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32) for i in range(3)]
    for x, r in zip(xs, drive(server.address, xs), strict=True):
        assert r.header.error == ""
        np.testing.assert_allclose(r.arrays["y"], reference(x), rtol=1e-5, atol=1e-5)


def test_sent_again_is_skipped(node, store_dir, tmp_path):
    server, client = node
    (tmp_path / "one").mkdir()
    stages = write_stages(tmp_path / "one")
    first = send_stage_file(client, stages[1]["model"])
    before = {p.name: p.stat().st_ino for p in store_dir.iterdir()}
    assert send_stage_file(client, stages[1]["model"]) == first
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # the same stage elsewhere (a profiling block reused)
    assert send_stage_file(client, tmp_path / "two" / "stage_1.onnx") == first
    assert {p.name: p.stat().st_ino for p in store_dir.iterdir()} == before  # nothing written again

    files = NodeFiles()
    assert files.path_for("a", client, stages[1]["model"]) == first
    server.stop(0.2)  # remembered: no call to the node
    assert files.path_for("a", client, tmp_path / "one" / "stage_1.onnx") == first
    files.forget("a")  # a node restarted empty: asked again
    with pytest.raises(NodeError):
        files.path_for("a", client, stages[1]["model"])


def test_changed_stage_file_is_sent_anew(node, store_dir, tmp_path):
    _, client = node
    stages = write_stages(tmp_path)
    files = NodeFiles()
    first = files.path_for("a", client, stages[1]["model"])
    m = onnx.load(stages[1]["model"], load_external_data=False)
    m.graph.name = "changed"
    time.sleep(0.01)
    onnx.save(m, stages[1]["model"])
    second = files.path_for("a", client, stages[1]["model"])
    assert second != first and Path(second).exists()


def test_has_names_size_and_digest(node, store_dir):
    _, client = node
    data = b"stage bytes"
    path = client.put_stream("x.onnx", len(data), _sha(data), iter([data]))
    assert Path(path).read_bytes() == data
    assert client.has_file("x.onnx", len(data), _sha(data)) == path
    assert client.has_file("x.onnx", len(data), _sha(b"other bytes")) == ""
    assert client.has_file("x.onnx", len(data) + 1, _sha(data)) == ""
    assert client.has_file("y.onnx", len(data), _sha(data)) == ""
    reply = client._stub.Put(iter([pb.FileChunk(name="x.onnx", size=len(data), sha256=_sha(data), data=data)]))
    assert reply.ok and reply.had and reply.path == path


@pytest.mark.parametrize("name", ["../x.onnx", "a/b.onnx", ".hidden", "", "..", "/etc/passwd", "x" * 300])
def test_bad_name_refused(node, store_dir, name):
    _, client = node
    data = b"abc"
    with pytest.raises(NodeError, match="file name"):
        client.put_stream(name, len(data), _sha(data), iter([data]))
    with pytest.raises(NodeError, match="file name"):
        client.has_file(name, len(data), _sha(data))
    assert _held(store_dir) == []
    assert not (store_dir.parent / "x.onnx").exists()


@pytest.mark.parametrize(
    ("size", "pieces", "why"),
    [
        (8, [b"abcd", b"efgh"], "sha256"),  # digest of other bytes
        (10, [b"abcd"], "4 bytes received, 10 announced"),
        (2, [b"abcd"], "more than the 2 bytes"),
        (1 << 62, [b"abcd"], "do not fit"),
        (-1, [], "size -1"),
    ],
)
def test_mismatch_refused_and_nothing_left(node, store_dir, size, pieces, why):
    _, client = node
    sha = _sha(b"something else")
    with pytest.raises(NodeError, match=why):
        client.put_stream("w.weights", size, sha, iter(pieces))
    assert _held(store_dir) == []
    client.health()


def test_malformed_streams_do_not_harm_the_node(node, store_dir):
    server, client = node
    stub = client._stub
    assert "empty stream" in stub.Put(iter([])).error
    assert "sha256" in stub.Put(iter([pb.FileChunk(name="a.bin", size=1, sha256="nothex")])).error
    big = b"\0" * (17 << 20)
    reply = stub.Put(iter([pb.FileChunk(name="a.bin", size=len(big), sha256=_sha(big)), pb.FileChunk(data=big)]))
    assert not reply.ok and "chunk" in reply.error

    def broken():
        yield b"x" * 1000
        raise RuntimeError("the sender failed")

    with pytest.raises(NodeError):
        client.put_stream("b.bin", 4000, _sha(b"x" * 4000), broken())
    deadline = time.monotonic() + 5
    while _held(store_dir) and time.monotonic() < deadline:  # the node notices the cancelled stream
        time.sleep(0.05)
    assert _held(store_dir) == []
    assert client.health().device == "a"


def test_put_file_streams_a_file(node, store_dir, tmp_path):
    _, client = node
    local = tmp_path / "blob.bin"
    local.write_bytes(np.random.default_rng(0).integers(0, 255, (3 << 20) + 17, dtype=np.uint8).tobytes())
    path = client.put_file(local, "blob.bin")
    assert Path(path).read_bytes() == local.read_bytes()
    ino = Path(path).stat().st_ino
    assert client.put_file(local, "blob.bin") == path and Path(path).stat().st_ino == ino


def test_prepare_compact_layout(tmp_path):
    """Offsets in the compact file are aligned, in order, and cover every referenced range once."""
    stages = write_stages(tmp_path)
    pkg = prepare(stages[1]["model"])
    weights, graph = pkg.files
    assert weights.name.endswith("-stage_1.weights") and graph.name.endswith("-stage_1.onnx")
    data = b"".join(weights.pieces())
    assert len(data) == weights.size and _sha(data) == weights.sha256
    assert len(pkg.files[-1].sha256) == 64
    assert prepare(stages[0]["model"]).files[0].size == (tmp_path / "stage_0.onnx").stat().st_size
