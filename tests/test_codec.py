"""The frame codec: round trips, zero-copy views, chunked frames, the old encoding, the wire."""

from __future__ import annotations

import numpy as np
import pytest

from common import testbed_pb2 as pb
from common.tensors import (
    ALIGN,
    PREFIX_BYTES,
    FrameReader,
    TensorFrame,
    decode_frame,
    decode_stream,
    encode_frame,
    encode_messages,
    encode_stream,
    to_tensor,
)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "f32": rng.standard_normal((2, 3, 5)).astype(np.float32),
        "scalar": np.array(2.5, np.float16),  # 0-d
        "empty": np.zeros((0, 7), np.int64),
        "flags": np.array([True, False, True]),
        "i8": np.arange(-5, 6, dtype=np.int8),
        "f64_t": np.arange(12.0).reshape(3, 4).T,  # not C-contiguous
        "u16": np.arange(9, dtype=np.uint16).reshape(3, 3),
    }


def _header() -> pb.Frame:
    h = pb.Frame(request_id=42, stage=3, sent_ns=7, deliver_after_ns=9, error="", hold_ns=1)
    h.timings.add(stage=0, device="a", recv_ns=1, start_ns=2, end_ns=3, send_ns=4, bytes_out=5)
    return h


def _check(got: TensorFrame, arrays: dict[str, np.ndarray], header: pb.Frame) -> None:
    assert got.header == header
    assert list(got.arrays) == list(arrays)
    for name, a in arrays.items():
        b = got.arrays[name]
        assert b.dtype == a.dtype and b.shape == a.shape, name
        assert np.array_equal(a, b), name


def test_round_trip_is_zero_copy():
    arrays, header = _arrays(), _header()
    frame = TensorFrame(header, arrays)
    wire = encode_frame(frame)
    assert len(frame.header.tensors) == 0  # encoding leaves the in-memory header as it was
    assert isinstance(wire, bytes)
    got = decode_frame(wire)
    _check(got, arrays, _header())
    received = np.frombuffer(wire, np.uint8)
    for name, b in got.arrays.items():
        if b.size:
            assert np.shares_memory(b, received), name  # a view into the received message
            assert (b.ctypes.data - received.ctypes.data) % ALIGN == 0, name
        assert not b.flags.writeable
    assert len(wire) < sum(a.nbytes for a in arrays.values()) + ALIGN * len(arrays) + 300


def test_message_is_a_valid_frame():
    """A plain protobuf parser reads the payload and the tensors' places in it."""
    arrays = _arrays()
    plain = pb.Frame.FromString(encode_frame(TensorFrame(_header(), arrays)))
    assert plain.request_id == 42 and plain.timings[0].device == "a"
    for t in plain.tensors:
        a = np.asarray(arrays[t.name])
        assert t.data == b"" and t.nbytes == a.nbytes
        assert plain.payload[t.offset : t.offset + t.nbytes] == np.ascontiguousarray(a).tobytes()
        if t.nbytes:
            assert (PREFIX_BYTES + t.offset) % ALIGN == 0


def test_no_arrays_and_old_encoding():
    got = decode_frame(encode_frame(TensorFrame(pb.Frame(request_id=1, error="boom"))))
    assert got.arrays == {} and got.header.error == "boom"
    old = pb.Frame(request_id=5, tensors=[to_tensor("x", np.arange(6, dtype=np.int32).reshape(2, 3))])
    got = decode_frame(old.SerializeToString())
    assert got.header.request_id == 5 and len(got.header.tensors) == 0
    np.testing.assert_array_equal(got.arrays["x"], np.arange(6).reshape(2, 3))


@pytest.mark.parametrize("chunk", [1, 100, 4096, 1 << 20])
def test_chunked_frames_in_a_stream(chunk):
    rng = np.random.default_rng(4)
    frames = [
        (_header(), _arrays()),
        (pb.Frame(request_id=2), {"big": rng.standard_normal((3, 1000)).astype(np.float32)}),
        (pb.Frame(request_id=3), {}),
        (pb.Frame(request_id=4), {"x": np.ones((0,), np.float32), "y": np.arange(5.0)}),
    ]
    messages = list(encode_stream((TensorFrame(h, a) for h, a in frames), chunk_bytes=chunk))
    if chunk == 1:
        assert len(messages) > 12000  # split everywhere, across array boundaries too
    got = list(decode_stream(iter(messages)))
    assert len(got) == len(frames)
    for g, (h, a) in zip(got, frames, strict=True):
        _check(g, a, h)


def test_chunked_frame_lands_in_one_buffer():
    a = np.arange(300_000, dtype=np.float32).reshape(100, 3000)
    messages = list(encode_messages(TensorFrame(pb.Frame(request_id=9), {"a": a, "b": a[:2]}), 256 << 10))
    assert len(messages) == 5 and all(len(m) <= (256 << 10) + 200 for m in messages)
    reader = FrameReader()
    assert [reader.feed(m) for m in messages[:-1]] == [None] * 4
    got = reader.feed(messages[-1])
    assert got is not None and got.header.request_id == 9
    np.testing.assert_array_equal(got.arrays["a"], a)
    np.testing.assert_array_equal(got.arrays["b"], a[:2])
    assert got.arrays["a"].base is got.arrays["b"].base or np.shares_memory(
        np.frombuffer(got.arrays["a"].base, np.uint8), got.arrays["b"]
    )
    with pytest.raises(ValueError, match="chunked"):
        decode_frame(messages[0])
    with pytest.raises(ValueError):
        FrameReader().feed(messages[1])  # a continuation where a frame should start


def test_corrupt_sizes_are_refused():
    wire = bytearray(encode_frame(TensorFrame(pb.Frame(), {"x": np.ones(4, np.float32)})))
    with pytest.raises(ValueError):
        decode_frame(bytes(wire[:20]))  # payload overruns the message
    with pytest.raises(ValueError, match="bad frame header"):
        decode_frame(bytes(wire[:-1]))  # header cut short
    h = pb.Frame()
    h.tensors.add(name="x", dtype="float32", shape=[1000], nbytes=4000, offset=0)
    with pytest.raises(ValueError, match="do not fit"):
        decode_frame(b"\x7a\x84\x80\x80\x80\x00abcd" + h.SerializeToString())
