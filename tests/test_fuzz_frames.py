"""Hostile frames: a node answers an error for each frame it cannot take and keeps serving.

Two real nodes on loopback (a bare source `src`, and `a` running the three stages of the small
test model), real gRPC, raw messages: thousands of malformed frames (a seeded mix of every kind
of damage, then random mutations and bytes) on Drive and on Push, then a valid request, which
must come back right. Each hostile frame on Drive gets one answer with `error` set and its
request id where one can be read; on Push the stream is not torn down and every frame whose
request id can be read comes home to the source as an error."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from common import testbed_pb2 as pb
from common.grpc_options import CHANNEL_OPTIONS
from common.tensors import NO_REQUEST, FrameError, FrameReader, TensorFrame, decode_stream, encode_messages
from node.server import NodeServer
from tests.node_helpers import drive, reference, src_and_a, stub

STAGES = 3
TOTAL_S = 60.0  # the whole file on a 2-core machine
X = np.arange(4, dtype=np.float32).reshape(1, 4) / 4


# -- building messages by hand (the codec's framing, protos/testbed.proto) ------------------


def _prefix(n: int) -> bytes:
    out = bytearray([0x7A])
    for i in range(5):
        out.append((n & 0x7F) | (0x80 if i < 4 else 0))
        n >>= 7
    return bytes(out)


def _message(header: pb.Frame, payload: bytes = b"") -> bytes:
    return _prefix(len(payload)) + payload + header.SerializeToString()


def _header(rid: int, payload_size: int = 0, **tensor: object) -> pb.Frame:
    """A header with sent_ns last (a 9-byte varint: cutting into it breaks the header) and one
    tensor described by `tensor` (defaults: x, float32 [1, 4] at offset 58, aligned)."""
    h = pb.Frame(request_id=rid, sent_ns=time.time_ns(), payload_size=payload_size)
    spec = {"name": "x", "dtype": "float32", "shape": [1, 4], "nbytes": 16, "offset": 58, **tensor}
    h.tensors.add(**spec)
    return h


_PAD = bytes(58)  # the payload starts 6 bytes into the message: 58 puts the array at 64


def _good(rid: int, arrays: dict[str, np.ndarray] | None = None, stage: int = 0) -> list[bytes]:
    """A valid frame's messages, made by the codec itself."""
    return list(
        encode_messages(TensorFrame(pb.Frame(request_id=rid, stage=stage), {"x": X} if arrays is None else arrays))
    )


# Each case: messages for ONE frame, and what answers it: (request id, error expected).
Case = tuple[list[bytes], list[tuple[int, bool]]]
# In a mix: also how many of its frames the node refuses unread (frames_refused).
Mixed = tuple[list[bytes], list[tuple[int, bool]], int]


def _codec_case(kind: str, rid: int, rng: np.random.Generator) -> Case:
    """A frame the codec refuses."""
    x = X.tobytes()
    refused = [(rid, True)]
    if kind == "offset_overrun":
        return [_message(_header(rid, offset=58 + 8), _PAD + x)], refused
    if kind == "nbytes_mismatch":
        return [_message(_header(rid, nbytes=12), _PAD + x)], refused
    if kind == "negative_shape":
        return [_message(_header(rid, shape=[-1, -4]), _PAD + x)], refused
    if kind == "huge_shape":
        return [_message(_header(rid, shape=[1 << 40, 1 << 40], nbytes=(1 << 62)), _PAD + x)], refused
    if kind == "huge_offset":
        return [_message(_header(rid, offset=(1 << 62) + int(rng.integers(1 << 20))), _PAD + x)], refused
    if kind == "negative_offset":
        return [_message(_header(rid, offset=-int(rng.integers(1, 64))), _PAD + x)], refused
    if kind == "bad_dtype":
        dtype = str(rng.choice(["float99", "object", "O", "<U4", ">f4", "", "V16", "i4,f4", "complex64", "M8[s]"]))
        return [_message(_header(rid, dtype=dtype), _PAD + x)], refused
    if kind == "deep_rank":
        return [_message(_header(rid, shape=[1] * 40, nbytes=4), _PAD + x)], refused
    if kind == "twice":
        h = _header(rid)
        h.tensors.add(name="x", dtype="float32", shape=[1, 4], nbytes=16, offset=58)
        return [_message(h, _PAD + x)], refused
    if kind == "old_data_short":
        h = pb.Frame(request_id=rid)
        h.tensors.add(name="x", dtype="float32", shape=[1, 4], data=x[: int(rng.integers(1, 16))])
        return [h.SerializeToString()], refused
    # chunked frames whose pieces do not add up
    if kind == "chunk_cut_short":  # refused when the next frame starts (or the stream ends)
        return [_message(_header(rid, payload_size=200), _PAD + x)], refused
    if kind == "chunk_overrun":
        h = _header(rid, payload_size=100)
        return [_message(h, _PAD + x), _prefix(20) + bytes(20), _prefix(40) + bytes(40)], refused
    if kind == "chunk_huge":
        return [_message(_header(rid, payload_size=1 << 40), _PAD + x)], refused
    if kind == "chunk_bad_piece":  # a continuation whose prefix says more than it carries: no piece,
        # so the frame is refused, and so is that message (its id unknown)
        messages = [_message(_header(rid, payload_size=200), _PAD + x), _prefix(500) + bytes(30)]
        return messages, [*refused, (NO_REQUEST, True)]
    raise AssertionError(kind)


CODEC_KINDS = [
    *("offset_overrun", "nbytes_mismatch", "negative_shape", "huge_shape", "huge_offset", "negative_offset"),
    *("bad_dtype", "deep_rank", "twice", "old_data_short"),
    *("chunk_cut_short", "chunk_overrun", "chunk_huge", "chunk_bad_piece"),
]


def _unreadable_case(kind: str, rid: int, rng: np.random.Generator) -> Case:
    """A frame whose header cannot be read: answered with NO_REQUEST."""
    (good,) = _good(rid)
    if kind == "truncated_payload":
        return [good[: int(rng.integers(7, 64 + 16))]], [(NO_REQUEST, True)]
    if kind == "truncated_header":  # into the last field, sent_ns (9 bytes)
        h = _header(rid)
        return [_message(h, _PAD + X.tobytes())[: -int(rng.integers(1, 10))]], [(NO_REQUEST, True)]
    if kind == "bad_varint":
        return [b"\x7a" + b"\xff" * int(rng.integers(1, 12))], [(NO_REQUEST, True)]
    if kind == "not_protobuf":
        return [_not_protobuf(rng)], [(NO_REQUEST, True)]
    if kind == "stray_piece":  # after a complete frame, a continuation where a frame should start
        return [good, _prefix(8) + bytes(8)], [(rid, False), (NO_REQUEST, True)]
    raise AssertionError(kind)


UNREADABLE_KINDS = ["truncated_payload", "truncated_header", "bad_varint", "not_protobuf", "stray_piece"]


def _not_protobuf(rng: np.random.Generator) -> bytes:
    """Random bytes that are no serialized Frame (nor start like a frame-codec message)."""
    while True:
        data = rng.bytes(int(rng.integers(1, 300)))
        if data[0] == 0x7A:
            continue
        try:
            pb.Frame.FromString(data)
        except Exception:
            return data


def _stage_case(kind: str, rid: int, rng: np.random.Generator) -> Case:
    """A frame the codec reads but stage 0 does not take: its error comes from the stage."""
    arrays = {
        "wrong_name": {"z": X},
        "wrong_dtype": {"x": X.astype(str(rng.choice(["float64", "float16", "int64", "int32", "bool", "uint8"])))},
        "wrong_rank": {"x": X.reshape(4) if rng.random() < 0.5 else X.reshape(1, 1, 4)},
        "wrong_shape": {"x": np.ones((1, int(rng.integers(5, 9))), np.float32)},
        "no_tensor": {},
    }[kind]
    return _good(rid, arrays), [(rid, True)]


STAGE_KINDS = ["wrong_name", "wrong_dtype", "wrong_rank", "wrong_shape", "no_tensor"]


def _request_case(kind: str, rid: int, rng: np.random.Generator) -> Case:
    """Header fields no request (on Drive) or no frame from upstream (on Push) may carry."""
    h = pb.Frame(request_id=rid)
    if kind == "error_set":
        h.error = "planted"
    elif kind == "probe_set":  # Drive only: on Push a probe is dropped by design
        h.probe = True
    elif kind == "hold_too_long":  # Push only: the source resets holds of driver frames
        h.deliver_after_ns = time.time_ns() + int(3600e9)
    elif kind == "bad_stage":  # Push only: the source sets the stage of driver frames
        h.stage = int(rng.choice([-3, STAGES, 99]))
    messages = list(encode_messages(TensorFrame(h, {"x": X})))
    return messages, [(rid, True)]


def _seeded_mix(n: int, seed: int, on_push: bool) -> list[Mixed]:
    """n cases drawn from every kind, unique request ids, a valid frame now and then."""
    rng = np.random.default_rng(seed)
    # refused unread: on Drive a request with error or probe set; on Push a hold too long (a
    # frame with error set or a stage this node does not run is routed home as an error)
    request_kinds = ["error_set", "hold_too_long", "bad_stage"] if on_push else ["error_set", "probe_set"]
    refused_kinds = {"hold_too_long"} if on_push else {"error_set", "probe_set"}
    makers: list[tuple[Callable[[str, int, np.random.Generator], Case], list[str]]] = [
        (_codec_case, CODEC_KINDS),
        (_unreadable_case, UNREADABLE_KINDS),
        (_stage_case, STAGE_KINDS),
        (_request_case, request_kinds),
    ]
    cases: list[Mixed] = []
    for i in range(n):
        rid = 1_000_000 * (seed + 1) + i
        if rng.random() < 0.05:
            cases.append((_good(rid), [(rid, False)], 0))
            continue
        make, kinds = makers[int(rng.integers(len(makers)))]
        kind = str(rng.choice(kinds))
        messages, answers = make(kind, rid, rng)
        if make in (_codec_case, _unreadable_case):
            refused = sum(err for _, err in answers)
        else:
            refused = int(kind in refused_kinds)
        cases.append((messages, answers, refused))
    return cases


def _mutations(n: int, seed: int) -> Iterator[bytes]:
    """n messages: valid ones flipped, cut, spliced, their prefix rewritten; and random bytes."""
    rng = np.random.default_rng(seed)
    big = {"x": np.ones((1, 4), np.float32), "pad": np.zeros(70_000, np.uint8)}
    sources = [m for rid in range(8) for m in _good(rid)] + list(encode_messages(TensorFrame(pb.Frame(), big), 16384))
    for _ in range(n):
        m = bytearray(sources[int(rng.integers(len(sources)))])
        op = int(rng.integers(6))
        if op == 0:  # flip bits
            for _ in range(int(rng.integers(1, 8))):
                m[int(rng.integers(len(m)))] ^= 1 << int(rng.integers(8))
        elif op == 1:  # cut
            m = m[: int(rng.integers(len(m)))]
        elif op == 2:  # splice random bytes in
            at = int(rng.integers(len(m) + 1))
            m[at:at] = rng.bytes(int(rng.integers(1, 40)))
        elif op == 3:  # a prefix that lies
            m[1:6] = _prefix(int(rng.integers(1 << 34)))[1:6]
        elif op == 4:  # random bytes, frame-codec tag first or not
            m = bytearray((b"\x7a" if rng.random() < 0.5 else b"") + rng.bytes(int(rng.integers(0, 400))))
        yield bytes(m)  # op 5: as it was


# -- the nodes ----------------------------------------------------------------------------


@pytest.fixture
def pipeline(tmp_path):
    """src (bare source) and a (stages 0..2), loaded; yields the two servers."""
    with src_and_a(tmp_path, ["a", "a", "a"]) as servers:
        yield servers


def _raw(address: str) -> tuple[grpc.Channel, Callable[..., object], Callable[..., object]]:
    """Push and Drive taking raw messages (bytes): whatever a peer could send."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    push = channel.stream_unary("/testbed.Node/Push", response_deserializer=pb.Empty.FromString)
    drive_raw = channel.stream_stream("/testbed.Node/Drive")
    return channel, push, drive_raw


def _frames_in(address: str) -> int:
    return stub(address).Stats(pb.Empty()).frames_in


def _wait_frames_in(address: str, target: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (got := _frames_in(address)) < target and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def _healthy(servers: dict[str, NodeServer]) -> None:
    for name, s in servers.items():
        h = stub(s.address).Health(pb.Empty(), timeout=5)
        assert h.device == name and h.loaded and h.status == "ready"
    (r,) = drive(servers["src"].address, [X], timeout=10)
    assert r.header.error == ""
    np.testing.assert_allclose(r.arrays["y"], reference(X), rtol=1e-5, atol=1e-5)


def test_hostile_frames_are_answered_and_the_node_keeps_serving(pipeline, caplog):
    t0 = time.monotonic()
    caplog.set_level(logging.WARNING)
    src, a = pipeline["src"], pipeline["a"]
    src_channel, _, drive_raw = _raw(src.address)
    a_channel, push, _ = _raw(a.address)

    # 1. Drive: every hostile frame answered once, with its request id where it can be read
    cases = _seeded_mix(2000, seed=1, on_push=False)
    cases.append((*_codec_case("chunk_cut_short", 99, np.random.default_rng(0)), 1))  # the stream ends in it
    expected = Counter(rid for _, answers, _ in cases for rid, _ in answers)
    errors = Counter(rid for _, answers, _ in cases for rid, err in answers if err)
    messages = [m for ms, _, _ in cases for m in ms]
    replies = list(decode_stream(drive_raw(iter(messages), timeout=TOTAL_S)))
    assert Counter(r.header.request_id for r in replies) == expected
    assert Counter(r.header.request_id for r in replies if r.header.error) == errors
    for r in replies:
        if not r.header.error:  # the valid requests in the mix came back right
            np.testing.assert_allclose(r.arrays["y"], reference(X), rtol=1e-5, atol=1e-5)
        else:
            assert r.arrays == {}
    assert src.servicer.frames_refused == sum(refused for _, _, refused in cases)
    assert errors[NO_REQUEST] > 300 and errors.total() > 1800  # thousands of hostile frames, all answered
    _healthy(pipeline)

    # 2. Push: the stream lives through them; every frame with a readable request id comes home
    cases = _seeded_mix(1500, seed=2, on_push=True)
    a_in, src_in, a_refused = _frames_in(a.address), _frames_in(src.address), a.servicer.frames_refused
    messages = [m for ms, _, _ in cases for m in ms]
    assert isinstance(push(iter(messages), timeout=TOTAL_S), pb.Empty)  # not torn down
    frames = sum(len(answers) for _, answers, _ in cases)
    home = sum(1 for _, answers, _ in cases for rid, _ in answers if rid != NO_REQUEST)
    assert _wait_frames_in(a.address, a_in + frames, 10) == a_in + frames  # one frame each, none lost
    assert _wait_frames_in(src.address, src_in + home, 20) == src_in + home  # every known one came home
    assert a.servicer.frames_refused - a_refused == sum(refused for _, _, refused in cases)
    _healthy(pipeline)

    # 3. Push: random mutations of valid messages and random bytes
    a_refused = a.servicer.frames_refused
    assert isinstance(push(_mutations(3000, seed=3), timeout=TOTAL_S), pb.Empty)
    assert a.servicer.frames_refused - a_refused > 2000  # 2,509 of 3,000 with this seed
    _healthy(pipeline)

    unexpected = [r for r in caplog.records if r.exc_info]
    assert not unexpected, unexpected[0].getMessage()
    src_channel.close()
    a_channel.close()
    assert time.monotonic() - t0 < TOTAL_S


# -- the reader alone ---------------------------------------------------------------------


def test_reader_refuses_one_frame_and_reads_the_next():
    """Each case alone through one reader: its answers, then a valid frame reads intact."""
    rng = np.random.default_rng(5)
    reader = FrameReader()
    kinds = [(_codec_case, k) for k in CODEC_KINDS] + [(_unreadable_case, k) for k in UNREADABLE_KINDS]
    for i, (make, kind) in enumerate(kinds):
        messages, answers = make(kind, 100 + i, rng)
        got = [f for m in messages for f in reader.read(m)]
        got += [f for m in _good(7) for f in reader.read(m)]
        ids = [(f.header.request_id, bool(f.invalid)) for f in got]
        assert ids == [*answers, (7, False)], kind
        assert all(f.arrays == {} for f in got if f.invalid), kind
        np.testing.assert_array_equal(got[-1].arrays["x"], X)
    messages, _ = _codec_case("chunk_cut_short", 5, rng)
    assert [f for m in messages for f in reader.read(m)] == []
    (cut,) = reader.finish()
    assert cut.header.request_id == 5 and "stream ended" in cut.invalid
    with pytest.raises(FrameError) as e:
        FrameReader().feed(_codec_case("bad_dtype", 6, rng)[0][0])
    assert e.value.header is not None and e.value.header.request_id == 6


def test_reader_never_raises_on_any_bytes():
    """Property: whatever messages came before, read() never raises and a valid frame after
    them reads intact."""
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
    st = hypothesis.strategies
    (good,) = _good(11)
    chunked = encode_messages(TensorFrame(pb.Frame(request_id=3), {"x": np.ones(200_000, np.uint8)}), 65536)
    pieces = [*chunked, good, _prefix(3) + b"abc", b"\x7a"]
    message = st.one_of(
        st.binary(max_size=300),
        st.sampled_from(pieces),
        st.tuples(st.sampled_from(pieces), st.integers(0, 400), st.binary(max_size=8)).map(
            lambda t: t[0][: t[1]] + t[2]
        ),
    )

    @hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(message, max_size=12))
    def check(messages: list[bytes]) -> None:
        reader = FrameReader()
        for m in messages:
            assert all(isinstance(f, TensorFrame) for f in reader.read(m))
        *_, last = reader.read(good)
        assert last.invalid == "" and last.header.request_id == 11
        np.testing.assert_array_equal(last.arrays["x"], X)

    check()
