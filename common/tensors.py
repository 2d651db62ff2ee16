"""Tensors on the wire.

Frames on the tensor-carrying streams (Push, and Drive both ways) use a zero-extra-copy codec
(framing documented in protos/testbed.proto). One message is

    0x7A, varint(P) padded to 5 bytes   6 bytes: tag and length of Frame.payload (field 15)
    P bytes of payload                   the arrays' raw C-order bytes, each 64-byte aligned
    serialized Frame (the header)        tensors with name/dtype/shape/nbytes/offset, no data

which is itself a valid serialized Frame (a plain protobuf parser reads `payload` and the
header), but neither side copies the arrays through protobuf: the sender joins the arrays'
buffers in one pass (the only copy in Python; gRPC needs one bytes object), and the receiver
gets one bytes object from gRPC and makes each array an np.frombuffer view into it (read-only).
A payload above CHUNK_BYTES is cut into several messages (the header rides on the first); the
receiver copies the pieces into one buffer and views the arrays there: 1 MiB pieces keep the
copies in cache and overlap them with the transfer (19 MB one-way ~11 ms instead of ~16 ms).
Plain Frames whose tensors carry `data` (the old encoding) are read too.

- encode_frame / decode_frame: a frame as ONE message, and back (no chunking).
- encode_messages / FrameReader: one frame as its messages (chunked when large) / a stream's
  frames from its messages; encode_stream / decode_stream do whole streams (common/rpc.py).

What arrives may be hostile or broken: a message that is not a frame, sizes and offsets that
overrun the payload, shapes that do not match the bytes, a dtype no model takes, a chunked
frame whose pieces do not add up. The reader refuses each such frame alone (FrameError, or a
TensorFrame with `invalid` set from FrameReader.read) and is ready for the next one, so a node
can answer an error for that frame and keep its stream.

In memory a frame is a TensorFrame: the header Frame (request id, stage, timings, ...; its
`tensors` field empty) and the arrays by name.

to_tensor / from_tensor are the copying protobuf path, for messages that embed a Tensor."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from common import testbed_pb2 as pb

PAYLOAD_TAG = 0x7A  # Frame.payload: field 15, wire type 2 (length-delimited)
PREFIX_BYTES = 6  # the tag and the payload length as a varint padded to 5 bytes (upb's most)
ALIGN = 64  # each array starts at a multiple of this from the start of the message
CHUNK_BYTES = 1 << 20  # payloads above this go in several messages (encode_messages)
_MAX_PAYLOAD = 1 << 31  # protobuf's limit on a length-delimited field
_MAX_DIMS = 32  # ONNX Runtime's tensors have fewer; numpy's limit is 64
_ZEROS = bytes(ALIGN)
# what a frame may carry: numpy's native numeric types that ONNX Runtime takes as inputs. Not
# object (pointers), not strings or structured/void types, not a byte order of the sender's.
DTYPES = tuple("bool int8 uint8 int16 uint16 int32 uint32 int64 uint64 float16 float32 float64".split())
NO_REQUEST = -1  # request_id of a frame refused before its header could be read


class FrameError(ValueError):
    """A frame that cannot be read. `header` is what of it could be read (its request id, ...),
    None when not even that."""

    def __init__(self, message: str, header: pb.Frame | None = None) -> None:
        super().__init__(message)
        self.header = header


@dataclass(eq=False)
class TensorFrame:
    """One frame in memory: the protobuf header and the named arrays it carries."""

    header: pb.Frame = field(default_factory=pb.Frame)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    decode_ns: int = 0  # FrameReader: time decoding the frame's last message (after it arrived)
    # FrameReader.read: why this frame could not be read ("" when it could); the header is then
    # what could be read of it (request_id NO_REQUEST when nothing), with no arrays
    invalid: str = ""

    @property
    def nbytes(self) -> int:
        return arrays_nbytes(self.arrays)


def _c_order(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(a.shape)


def _prefix(size: int) -> bytes:
    """Tag and length of Frame.payload, the varint padded to a fixed 5 bytes."""
    if size >= _MAX_PAYLOAD:
        raise ValueError(f"frame payload of {size} bytes is too large")
    out = bytearray(PREFIX_BYTES)
    out[0] = PAYLOAD_TAG
    for i in range(1, PREFIX_BYTES):  # 7 bits a byte, continuation bit on all but the last
        out[i] = (size & 0x7F) | (0x80 if i < PREFIX_BYTES - 1 else 0)
        size >>= 7
    return bytes(out)


def _layout(header: pb.Frame, arrays: Mapping[str, np.ndarray]) -> tuple[list[memoryview], int]:
    """Describe the arrays in header.tensors; return the payload's pieces and its size."""
    pieces: list[memoryview] = []
    pos = 0  # in the payload, which starts PREFIX_BYTES into the message
    for name, array in arrays.items():
        a = _c_order(array)
        if a.nbytes:
            pad = -(PREFIX_BYTES + pos) % ALIGN
            if pad:
                pieces.append(memoryview(_ZEROS)[:pad])
                pos += pad
            pieces.append(memoryview(a).cast("B"))  # the array's own memory: no copy
        header.tensors.add(name=name, dtype=a.dtype.name, shape=a.shape, nbytes=a.nbytes, offset=pos)
        pos += a.nbytes
    return pieces, pos


def encode_messages(
    frame: TensorFrame,
    chunk_bytes: int = CHUNK_BYTES,
    on_payload: Callable[[pb.Frame, int, int], None] | None = None,
) -> Iterator[bytes]:
    """A frame's wire messages: one (prefix, arrays, header) when the payload is at most
    chunk_bytes, else the first chunk of the payload with the header (payload_size set), then
    the following chunks, each a message of its own (prefix and bytes only). Each message is
    made by a single join of buffer pieces; chunks are built as they are consumed.

    on_payload(header, elapsed_ns, payload_size), when given, is called after the first
    message's payload bytes have been joined and before the header is serialized, elapsed_ns
    being the time spent encoding so far: the caller can stamp that time (and anything else)
    into the header that goes out with them. The first message then costs one more copy of its
    payload part (at most chunk_bytes) to append the header."""
    t0 = time.perf_counter_ns()
    header = frame.header
    del header.tensors[:]
    try:
        pieces, size = _layout(header, frame.arrays)
        if size > chunk_bytes:
            header.payload_size = size
        chunks = _chunks(pieces, size, chunk_bytes)
        body = None
        if on_payload is not None:
            body = b"".join(next(chunks))
            on_payload(header, time.perf_counter_ns() - t0, size)
        head = header.SerializeToString()
    finally:  # in memory the arrays are the truth
        del header.tensors[:]
        header.payload_size = 0
    yield b"".join([*next(chunks), head]) if body is None else body + head
    for parts in chunks:
        yield b"".join(parts)  # type: ignore[arg-type]


def _chunks(pieces: list[memoryview], size: int, chunk_bytes: int) -> Iterator[list[Any]]:
    """Each message's parts (its prefix, then its payload pieces) as consumed, in order: all
    the payload in one message when it is at most chunk_bytes, else chunk_bytes a message."""
    if size <= chunk_bytes:
        yield [_prefix(size), *pieces]
        return
    k, used = 0, 0  # piece index, bytes of it already sent
    while k < len(pieces):
        parts: list[Any] = [b""]
        room = chunk_bytes
        while room and k < len(pieces):
            piece = pieces[k][used : used + room]
            parts.append(piece)
            room -= len(piece)
            used += len(piece)
            if used == len(pieces[k]):
                k, used = k + 1, 0
        parts[0] = _prefix(chunk_bytes - room)
        yield parts


def encode_frame(frame: TensorFrame) -> bytes:
    """A frame as ONE wire message (prefix, arrays, header), whatever its size."""
    (message,) = encode_messages(frame, chunk_bytes=_MAX_PAYLOAD)
    return message


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint in frame prefix")
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7


def _split(data: bytes) -> tuple[int, int, pb.Frame | None]:
    """(payload start, payload size, header or None when the message has no header bytes)."""
    try:
        if data[:1] != bytes((PAYLOAD_TAG,)):  # a plain Frame (the old encoding, or no arrays)
            return 0, 0, pb.Frame.FromString(data)
        size, start = _varint(data, 1)
        end = start + size
        if end > len(data):
            raise FrameError(f"frame payload of {size} bytes overruns a {len(data)}-byte message")
        return start, size, (pb.Frame.FromString(memoryview(data)[end:]) if end < len(data) else None)
    except DecodeError as e:
        raise FrameError(f"bad frame header: {e}") from e
    except FrameError:
        raise
    except ValueError as e:
        raise FrameError(str(e)) from e


def _described(t: pb.Tensor) -> tuple[np.dtype, tuple[int, ...], int]:
    """A tensor's dtype, shape and element count as its header says, checked to be an array."""
    if t.dtype not in DTYPES:
        raise ValueError(f"tensor {t.name!r}: dtype {t.dtype!r} is not one a frame carries ({', '.join(DTYPES)})")
    shape = tuple(t.shape)
    if len(shape) > _MAX_DIMS or any(d < 0 or d >= _MAX_PAYLOAD for d in shape):
        raise ValueError(f"tensor {t.name!r}: shape {list(shape)[:8]} (rank {len(shape)}) is not an array's")
    count = 1
    for d in shape:
        count *= d
    return np.dtype(t.dtype), shape, count


def _arrays(header: pb.Frame, buffer: Any, start: int, size: int) -> TensorFrame:
    """Views into buffer (payload at `start`, `size` bytes) for the header's tensors."""
    arrays: dict[str, np.ndarray] = {}
    try:
        for t in header.tensors:
            dtype, shape, count = _described(t)
            if t.name in arrays:
                raise ValueError(f"tensor {t.name!r} twice in one frame")
            n = count * dtype.itemsize
            raw = t.data  # read once: each read copies
            if raw:  # old encoding: the bytes inside the Tensor
                if len(raw) != n:
                    raise ValueError(f"tensor {t.name!r}: {len(raw)} bytes of data for {dtype.name}{list(shape)}")
                arrays[t.name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
                continue
            if t.nbytes != n or t.offset < 0 or t.offset + n > size:
                raise ValueError(
                    f"tensor {t.name!r}: {t.nbytes} bytes at {t.offset} do not fit "
                    f"{dtype.name}{list(shape)} in a {size}-byte payload"
                )
            arrays[t.name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + t.offset).reshape(shape)
    except ValueError as e:
        raise FrameError(str(e), header) from e
    finally:
        del header.tensors[:]
        header.payload_size = 0
        header.ClearField("payload")  # a header's own copy of field 15 (only the prefix's counts)
    return TensorFrame(header, arrays)


def _refused(why: str, header: pb.Frame | None) -> TensorFrame:
    """The frame FrameReader.read gives for one it could not read."""
    if header is None:
        header = pb.Frame(request_id=NO_REQUEST)
    del header.tensors[:]
    header.payload_size = 0
    header.ClearField("payload")
    return TensorFrame(header, {}, invalid=why)


class FrameReader:
    """Frames from the messages of one stream, in order: read() returns the frames a message
    completes. A one-message frame's arrays are read-only views into that message; a chunked
    frame's payload is copied chunk by chunk into one buffer allocated when its first message
    arrives, and its arrays are views into that buffer.

    A frame that cannot be read comes out refused (`invalid` set) and the reader goes on with
    the next one: the rest of a broken chunked frame (the messages without a header that
    follow) is skipped, and a chunked frame cut short by the next frame's first message is
    refused before that frame is read."""

    def __init__(self, max_payload: int = _MAX_PAYLOAD) -> None:
        self.max_payload = max_payload  # a chunked frame announcing more is refused, not allocated
        self._header: pb.Frame | None = None
        self._buffer: np.ndarray | None = None
        self._filled = 0
        self._skipping = False

    def feed(self, data: bytes) -> TensorFrame | None:
        """The frame this message completes, or None; raises FrameError for the first frame in
        it that cannot be read, for a caller that gives up on the stream then (read() goes on)."""
        frame = None
        for f in self.read(data):
            if f.invalid:
                raise FrameError(f.invalid, None if f.header.request_id == NO_REQUEST else f.header)
            frame = f
        return frame

    def read(self, data: bytes) -> list[TensorFrame]:
        """The frames this message completes, in order (usually none or one), refused ones among
        them. Never raises."""
        t0 = time.perf_counter_ns()
        try:
            frames = self._read(data)
        except Exception as e:  # a case not foreseen: this frame is lost, the stream goes on
            why = f"{type(e).__name__}: {e}"
            frames = [self._abandon(why) if self._header is not None else _refused(why, None)]
        if frames and not frames[-1].invalid:
            frames[-1].decode_ns = time.perf_counter_ns() - t0
        return frames

    def finish(self) -> list[TensorFrame]:
        """The stream ended: a chunked frame still waiting for pieces is refused."""
        if self._header is None:
            return []
        return [self._abandon(f"stream ended after {self._filled} of {self._total} bytes of a chunked frame")]

    @property
    def _total(self) -> int:
        return 0 if self._buffer is None else len(self._buffer) - PREFIX_BYTES

    def _abandon(self, why: str) -> TensorFrame:
        """Refuse the chunked frame in progress; skip what is left of it."""
        header, self._header, self._buffer, self._filled = self._header, None, None, 0
        self._skipping = True
        return _refused(why, header)

    def _read(self, data: bytes) -> list[TensorFrame]:
        frames: list[TensorFrame] = []
        try:
            start, size, header = _split(data)
        except FrameError as e:  # no piece of a chunked frame in progress either: that one is broken too
            if self._header is not None:
                frames.append(self._abandon(f"chunked frame cut by a message that is no piece of it: {e}"))
            return [*frames, _refused(str(e), None)]
        if self._header is not None:
            if header is not None:  # the next frame starts: this one's pieces did not add up
                frames.append(
                    self._abandon(f"chunked frame cut short after {self._filled} of {self._total} payload bytes")
                )
            else:
                frame = self._piece(data, start, size)
                return frames if frame is None else [frame]
        if header is None:
            if self._skipping:  # what is left of a broken chunked frame
                return frames
            return [*frames, _refused("frame message without a header where a frame should start", None)]
        self._skipping = False
        total = header.payload_size
        if total <= size:
            try:
                return [*frames, _arrays(header, data, start, size)]
            except FrameError as e:
                return [*frames, _refused(str(e), header)]
        if total > self.max_payload:
            self._skipping = True
            return [*frames, _refused(f"chunked frame of {total} bytes is over {self.max_payload}", header)]
        try:
            buffer = np.empty(PREFIX_BYTES + total, np.uint8)  # same alignment as a message
        except MemoryError:
            self._skipping = True
            return [*frames, _refused(f"no memory for a chunked frame of {total} bytes", header)]
        self._header, self._buffer, self._filled = header, buffer, 0
        frame = self._piece(data, start, size)
        return frames if frame is None else [*frames, frame]

    def _piece(self, data: bytes, start: int, size: int) -> TensorFrame | None:
        """Copy one piece of the chunked frame in progress; the frame once it is complete."""
        buf, filled = self._buffer, self._filled
        assert buf is not None
        if filled + size > len(buf) - PREFIX_BYTES:
            return self._abandon(f"chunked frame overruns its payload_size of {len(buf) - PREFIX_BYTES} bytes")
        buf[PREFIX_BYTES + filled : PREFIX_BYTES + filled + size] = np.frombuffer(
            data, np.uint8, count=size, offset=start
        )
        self._filled = filled + size
        if self._filled < len(buf) - PREFIX_BYTES:
            return None
        header, self._header, self._buffer = self._header, None, None
        assert header is not None
        try:
            return _arrays(header, buf, PREFIX_BYTES, self._filled)
        except FrameError as e:
            return _refused(str(e), header)


def decode_frame(data: bytes) -> TensorFrame:
    """A frame from ONE wire message; arrays are read-only views into `data` (no copy).
    Raises FrameError when it cannot be read."""
    frame = FrameReader().feed(data)
    if frame is None:
        raise FrameError("chunked frame: read its messages with a FrameReader")
    return frame


def encode_stream(frames: Iterable[TensorFrame], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The messages of a stream of frames."""
    for frame in frames:
        yield from encode_messages(frame, chunk_bytes)


def decode_stream(messages: Iterable[bytes], refused: bool = False) -> Iterator[TensorFrame]:
    """The frames of a stream of messages. A frame that cannot be read raises FrameError, which
    ends the stream; with refused=True it comes out refused (`invalid` set), the stream goes on,
    and a chunked frame the stream leaves unfinished comes out refused at its end."""
    reader = FrameReader()
    for message in messages:
        if refused:
            yield from reader.read(message)
            continue
        frame = reader.feed(message)
        if frame is not None:
            yield frame
    if refused:
        yield from reader.finish()


def arrays_nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in arrays.values())


def frame_nbytes(frame: TensorFrame) -> int:
    """Approximate wire size of a frame, cheaply: array bytes plus a small allowance per header."""
    h = frame.header
    return frame.nbytes + 64 * len(frame.arrays) + 64 * len(h.timings) + 32


# -- the copying protobuf path --------------------------------------------------------------


def to_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    """One numpy array as a Tensor message with its bytes in `data` (copies)."""
    a = _c_order(array)
    return pb.Tensor(name=name, dtype=a.dtype.name, shape=a.shape, nbytes=a.nbytes, data=a.tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A read-only numpy view over one copy of a Tensor's `data`."""
    data = tensor.data  # read once: every access to a bytes field copies
    return np.frombuffer(data, dtype=np.dtype(tensor.dtype)).reshape(tuple(tensor.shape))


def tensor_nbytes(tensors: Iterable[pb.Tensor]) -> int:
    """Raw data bytes from dtype and shape. Not ByteSize(): upb computes that by serializing."""
    total = 0
    for t in tensors:
        n = np.dtype(t.dtype).itemsize
        for d in t.shape:
            n *= d
        total += n
    return total
