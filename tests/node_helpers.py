"""What the node tests share: a tiny 3-stage ONNX model cut by hand, an identity stage, a driver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import testbed_pb2 as pb
from common import testbed_pb2_grpc as pb_grpc
from common.grpc_options import CHANNEL_OPTIONS
from common.ort_session import open_session
from common.rpc import node_stub
from common.tensors import TensorFrame

rng = np.random.default_rng(0)
W1 = rng.standard_normal((4, 8)).astype(np.float32)
W2 = rng.standard_normal((8, 6)).astype(np.float32)
W3 = rng.standard_normal((4, 6)).astype(np.float32)


def _vi(name: str, width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])


def _model(nodes: list, inputs: list, outputs: list, inits: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


_N1 = [helper.make_node("MatMul", ["x", "W1"], ["m1"]), helper.make_node("Relu", ["m1"], ["h1"])]
_N2 = [helper.make_node("MatMul", ["h1", "W2"], ["h2"])]
_N3 = [helper.make_node("MatMul", ["x", "W3"], ["m3"]), helper.make_node("Add", ["h2", "m3"], ["y"])]


def whole_model() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, n) for w, n in ((W1, "W1"), (W2, "W2"), (W3, "W3"))]
    return _model(_N1 + _N2 + _N3, [_vi("x", 4)], [_vi("y", 6)], inits, "whole")


def identity_stage(folder: Path, width: int) -> str:
    """A one-stage model passing x (N x `width` floats) on as y: a stage that only moves bytes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    path = folder / "identity.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return str(path)


def write_stages(folder: Path) -> list[dict]:
    """Three stage files; x crosses two cuts; stage 1 keeps its weights in external data."""
    s0 = _model(_N1, [_vi("x", 4)], [_vi("h1", 8)], [numpy_helper.from_array(W1, "W1")], "s0")
    s1 = _model(_N2, [_vi("h1", 8)], [_vi("h2", 6)], [numpy_helper.from_array(W2, "W2")], "s1")
    s2 = _model(_N3, [_vi("h2", 6), _vi("x", 4)], [_vi("y", 6)], [numpy_helper.from_array(W3, "W3")], "s2")
    onnx.save(s0, folder / "stage_0.onnx")
    onnx.save(s1, folder / "stage_1.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    onnx.save(s2, folder / "stage_2.onnx")
    return [
        {
            "index": 0,
            "model": str(folder / "stage_0.onnx"),
            "inputs": ["x"],
            "outputs": ["h1"],
            "forward": ["h1", "x"],
        },
        {
            "index": 1,
            "model": str(folder / "stage_1.onnx"),
            "inputs": ["h1"],
            "outputs": ["h2"],
            "forward": ["h2", "x"],
        },
        {
            "index": 2,
            "model": str(folder / "stage_2.onnx"),
            "inputs": ["h2", "x"],
            "outputs": ["y"],
            "forward": ["y"],
        },
    ]


def reference(x: np.ndarray) -> np.ndarray:
    return open_session(whole_model().SerializeToString()).run(["y"], {"x": x})[0]


def load_request(
    device: str,
    stages: list[dict],
    assignment: Sequence[str],
    addresses: dict[str, str],
    source: str,
    *,
    rate_bps: float = 0,
    delay_s: float = 0,
    threads: int = 1,
) -> pb.LoadRequest:
    """LoadRequest for `device`, stage i running on assignment[i]."""
    n = len(stages)
    specs = []
    for st in stages:
        i = st["index"]
        if assignment[i] != device:
            continue
        nxt = assignment[i + 1] if i + 1 < n else source
        specs.append(
            pb.StageSpec(
                index=i,
                model_path=st["model"],
                inputs=st["inputs"],
                outputs=st["outputs"],
                forward=st["forward"],
                next_device=nxt,
            )
        )
    peers = [
        pb.Peer(device=d, address=a, rate_bps=int(rate_bps), delay_s=delay_s)
        for d, a in addresses.items()
        if d != device
    ]
    return pb.LoadRequest(
        device=device,
        num_stages=n,
        source_device=source,
        stages=specs,
        peers=peers,
        first_device=assignment[0],
        threads=threads,
    )


def stub(address: str) -> pb_grpc.NodeStub:
    """The node's stub, Push and Drive in the frame codec (TensorFrames)."""
    return node_stub(grpc.insecure_channel(address, options=CHANNEL_OPTIONS))


def drive(address: str, inputs: Iterable[np.ndarray], name: str = "x", timeout: float = 30) -> list[TensorFrame]:
    """Send all frames on one Drive stream (all in flight), return the results by request id."""

    def frames():
        for i, x in enumerate(inputs):
            yield TensorFrame(pb.Frame(request_id=i, stage=0, sent_ns=time.time_ns()), {name: x})

    results = list(stub(address).Drive(frames(), timeout=timeout))
    return sorted(results, key=lambda f: f.header.request_id)


def stall_once(server, stage: int, call: int, seconds: float) -> None:
    """Make `stage` on this loaded node (a NodeServer) sleep `seconds` before its `call`-th run
    from now (0-based), once: a planted stall. Wraps the stage's run in place."""
    import itertools

    st = server.servicer._pipe.stages[stage]
    run = st.run
    calls = itertools.count()

    def stalled(feeds):
        if next(calls) == call:
            time.sleep(seconds)
        return run(feeds)

    st.run = stalled


@contextlib.contextmanager
def src_and_a(folder: Path, devices: list[str]) -> Iterator[dict]:
    """Nodes "src" (the source) and "a" in this process, the 3-stage test model loaded with stage k
    on devices[k]; stopped on exit. Yields the servers by name."""
    from node.server import NodeServer

    servers = {n: NodeServer(n, 0, "127.0.0.1").start() for n in ("src", "a")}
    try:
        stages = write_stages(folder)
        addresses = {n: s.address for n, s in servers.items()}
        for name, s in servers.items():
            reply = stub(s.address).Load(load_request(name, stages, devices, addresses, "src"))
            assert reply.ok, reply.error
        yield servers
    finally:
        for s in servers.values():
            s.stop(0.2)
