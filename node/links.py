"""Outgoing links: one long-lived Push stream per peer, with the link emulated in the node.

Pacing: a frame of B bytes occupies the link for B*8/rate seconds; frames queue behind each
other, so back-to-back frames get exactly the link's rate. A frame is handed to gRPC when the
link starts transmitting it, stamped deliver_after_ns = tx_end + delay, and the receiver holds
it until then; the loopback transfer itself overlaps the emulated transmission instead of adding
to it, and the delay overlaps between frames like a real link's propagation delay.

When tc shapes the rate (rate 0 here) and the node only adds the delay, the transmission ends
when the frame arrives, which only the receiver sees: the frame carries hold_ns = delay and the
receiver holds it that long after arrival.

Serialisation: the sender encodes each frame itself (common/tensors.py encode_messages) and
hands gRPC the bytes. The first message's payload is joined first, then the time that took is
stamped as serialize_ns on the frame's last StageTiming (the stage that sent it), then the
link is paced, and only then is the header serialized: the stamp rides in the frame it
describes, and the emulated transmission starts after the frame was serialized."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from common import testbed_pb2 as pb
from common.grpc_options import CHANNEL_OPTIONS
from common.rpc import SERVICE
from common.tensors import TensorFrame, encode_messages, frame_nbytes

log = logging.getLogger("node.links")

_SPIN_NS = 1_000_000  # spin at most the last millisecond of a wait
_STOP = object()


def sleep_until(t_ns: int) -> None:
    """Sleep until wall-clock time t_ns: time.sleep for most of it, spin the last ~1 ms."""
    while True:
        remaining = t_ns - time.time_ns()
        if remaining <= 0:
            return
        if remaining > _SPIN_NS:
            time.sleep((remaining - _SPIN_NS) / 1e9)


class PeerSender:
    """Frames to one peer over ONE client-streaming Push call fed from a bounded queue.

    send() blocks when the queue is full (back-pressure from a slow link or peer). If the peer
    cannot be reached or the stream breaks, the frames in flight and queued are handed to
    on_failed(frame, message) (the node sends them home with an error), and the next frame
    opens a fresh stream."""

    def __init__(
        self,
        address: str,
        rate_bps: float = 0.0,
        delay_s: float = 0.0,
        *,
        name: str = "",
        queue_depth: int = 8,
        connect_timeout_s: float = 10.0,
        on_failed: Callable[[TensorFrame, str], None] | None = None,
    ) -> None:
        self.address = address
        self.name = name or address
        self.rate_bps = float(rate_bps)
        self.delay_ns = int(round(delay_s * 1e9))
        self.connect_timeout_s = connect_timeout_s
        self.on_failed = on_failed
        self.frames_out = 0
        self.bytes_out = 0
        self._busy_until_ns = 0  # the emulated link is transmitting until then
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_depth))
        self._inflight: TensorFrame | None = None
        self._carry: object = None
        self._stopping = threading.Event()
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        # Push with the frame codec's messages as they are (this sender encodes them itself)
        self._push = self._channel.stream_unary(
            f"/{SERVICE.full_name}/Push", request_serializer=None, response_deserializer=pb.Empty.FromString
        )
        self._thread = threading.Thread(target=self._run, name=f"send->{self.name}", daemon=True)
        self._thread.start()

    def send(self, frame: TensorFrame) -> None:
        """Queue a frame for the link (blocks while the queue is full)."""
        if self._stopping.is_set():
            self._fail(frame, f"link to {self.name} closed")
            return
        self._queue.put(frame)

    def set_link(self, rate_bps: float, delay_s: float) -> None:
        """Change the emulated link in place: frames not yet on it are paced and held by the new
        figures; the stream, the queue and the frames in flight are left as they are."""
        self.rate_bps = float(rate_bps)
        self.delay_ns = int(round(delay_s * 1e9))

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued frames (up to timeout_s), then end the stream and the channel."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._channel.close()

    # -- internals -------------------------------------------------------------------------

    def _pace(self, frame: TensorFrame, size: int) -> None:
        now = time.time_ns()
        if self.rate_bps > 0:
            start = max(now, self._busy_until_ns)
            sleep_until(start)  # the link is still sending the previous frame
            tx_end = start + int(size * 8e9 / self.rate_bps)
            self._busy_until_ns = tx_end
            frame.header.deliver_after_ns = tx_end + self.delay_ns
        elif self.delay_ns > 0:
            frame.header.hold_ns = self.delay_ns

    def _messages(self, frame: TensorFrame) -> Iterator[bytes]:
        """The frame's wire messages: serialize_ns stamped on the sending stage's timing, the
        link paced (deliver_after_ns / hold_ns), then the header serialized."""
        size = frame_nbytes(frame)

        def stamp(header: pb.Frame, elapsed_ns: int, payload: int) -> None:
            if header.timings:
                header.timings[-1].serialize_ns = elapsed_ns
            self._pace(frame, size)

        return encode_messages(frame, on_payload=stamp)

    def _requests(self, first: TensorFrame, dead: threading.Event, done: threading.Event) -> Iterator[bytes]:
        """The request iterator of one Push call. gRPC consumes it on its own thread; after the
        call dies it may still be blocked here, so it polls `dead` and leaves any frame it took
        in self._carry, so that no two streams ever take from the queue at once."""
        item: object = first
        try:
            while True:
                if item is _STOP:
                    return
                assert isinstance(item, TensorFrame)
                size = frame_nbytes(item)
                self._inflight = item
                yield from self._messages(item)
                self.frames_out += 1
                self.bytes_out += size
                while True:
                    if dead.is_set():
                        return
                    try:
                        item = self._queue.get(timeout=0.1)
                        break
                    except queue.Empty:
                        continue
                if dead.is_set():
                    self._carry = item
                    return
        finally:
            done.set()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, TensorFrame)
            try:
                grpc.channel_ready_future(self._channel).result(timeout=self.connect_timeout_s)
            except grpc.FutureTimeoutError:
                msg = f"peer {self.name} at {self.address} unreachable"
                log.error(msg)
                self._fail(item, msg)
                self._drain(msg)
                continue
            self._inflight = None
            self._carry = None
            dead, done = threading.Event(), threading.Event()
            try:
                self._push(self._requests(item, dead, done))
                return  # the iterator ended: closed
            except grpc.RpcError as e:
                msg = f"link to {self.name} at {self.address} failed: {e.code().name} {e.details()}"
                log.error(msg)
                dead.set()
                done.wait(0.5)
                if self._inflight is not None:
                    self._fail(self._inflight, msg)
                carry, self._carry = self._carry, None
                if isinstance(carry, TensorFrame):
                    self._fail(carry, msg)
                elif carry is _STOP:
                    return
                self._drain(msg)
                if self._stopping.is_set():
                    return

    def _drain(self, msg: str) -> None:
        """Fail everything queued now (the peer is gone); later frames try a new stream."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._queue.put(_STOP)
                return
            assert isinstance(item, TensorFrame)
            self._fail(item, msg)

    def _fail(self, frame: TensorFrame, msg: str) -> None:
        if self.on_failed is not None:
            try:
                self.on_failed(frame, msg)
            except Exception:  # never let a callback kill the sender thread
                log.exception("on_failed callback")
        else:
            log.error("dropped frame %d: %s", frame.header.request_id, msg)
