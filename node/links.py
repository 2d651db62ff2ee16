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
describes, and the emulated transmission starts after the frame was serialized.

Neighbour heartbeat: a peer that dies mid-stream is noticed by gRPC only when the connection
breaks, and a peer that cannot be reached again makes every later frame wait out the connect
timeout (10 s) one after the other. So while a sender holds frames (queued, or taken and not
yet on the wire) it asks the peer's Health every HEARTBEAT_S on a channel of its own; no answer
for DEAD_AFTER_S and the peer is lost: every frame it holds fails at once, flagged `lost`,
and so does every frame sent to it until it answers again."""

from __future__ import annotations

import collections
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
HEARTBEAT_S = 0.2  # how often a busy sender asks its peer's Health
DEAD_AFTER_S = 0.5  # a busy sender's peer silent this long is lost
_RECHECK_NS = 100_000_000  # a frame with longer than this left to cross waits for a rate change


_QUOTA_SPIN_NS = 200_000  # under a fractional CPU quota: about the kernel timer's own lateness
_QUOTA_TTL_S = 5.0  # how long the quota read for the spin decision holds (a live update changes it)
_spin_cache: tuple[float, int] = (-_QUOTA_TTL_S, _SPIN_NS)


def _spin_ns() -> int:
    """How much of a wait to spin rather than sleep: the last millisecond with a whole CPU or more;
    under a fractional CPU quota only the last 0.2 ms. A millisecond's spin spends the quota the
    node's stages need (0.6-0.8 ms a frame measured, against 5 ms a 100-ms period at 0.05 CPU), and
    a thread that runs out of quota mid-spin wakes a CFS period late; asleep to the end, the
    kernel's timer releases a frame about 0.1 ms late (median measured at 0.05 CPU), a twentieth of
    a 2-ms link."""
    global _spin_cache
    now = time.monotonic()
    if now - _spin_cache[0] >= _QUOTA_TTL_S:
        from node import resources

        quota = resources.cpu_quota()
        _spin_cache = (now, _SPIN_NS if quota is None or quota >= 1.0 else _QUOTA_SPIN_NS)
    return _spin_cache[1]


def sleep_until(t_ns: int) -> None:
    """Sleep until wall-clock time t_ns: time.sleep for most of it, spin the last ~1 ms (not under
    a fractional CPU quota: _spin_ns)."""
    spin = _spin_ns()
    while True:
        remaining = t_ns - time.time_ns()
        if remaining <= 0:
            return
        if remaining > spin:
            time.sleep((remaining - spin) / 1e9)


class PeerSender:
    """Frames to one peer over ONE client-streaming Push call fed from a bounded queue.

    send() blocks when the queue is full (back-pressure from a slow link or peer). If the peer
    cannot be reached, the stream breaks or the heartbeat finds the peer silent, the frames in
    flight and queued are handed to on_failed(frame, message) with `lost` set (the node sends
    them home with an error), and the next frame opens a fresh stream. on_sent(frame) is called
    once a frame has been handed to the wire (the node stops counting it as held).
    heartbeat_s=0 switches the heartbeat off (gRPC's own detection alone)."""

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
        on_sent: Callable[[TensorFrame], None] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self.address = address
        self.name = name or address
        self.rate_bps = float(rate_bps)
        self.delay_ns = int(round(delay_s * 1e9))
        self.connect_timeout_s = connect_timeout_s
        self.on_failed = on_failed
        self.on_sent = on_sent
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.lost = ""  # why the peer is taken for lost ("" while it answers)
        self.frames_out = 0
        self.bytes_out = 0
        self._busy_until_ns = 0  # the emulated link is transmitting until then
        self._rate_changed = threading.Event()  # set_link wakes a frame still crossing the link
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_depth))
        self._inflight: TensorFrame | None = None
        self._holding: TensorFrame | None = None  # taken from the queue, not yet handed to the wire
        self._call: grpc.Future | None = None  # the Push call in progress: the heartbeat cancels it
        self._carry: object = None
        self._getting = False  # the request iterator is waiting on the queue
        # headers of the frames handed to the wire lately, with when (monotonic s): cancelling the
        # call of a silent peer discards what it has not read yet, so those go home too
        self._handed: collections.deque[tuple[pb.Frame, float]] = collections.deque()
        self._silent_since = 0.0  # set with `lost`: frames handed over since then go home
        self._stopping = threading.Event()
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        # Push with the frame codec's messages as they are (this sender encodes them itself)
        self._push = self._channel.stream_unary(
            f"/{SERVICE.full_name}/Push", request_serializer=None, response_deserializer=pb.Empty.FromString
        )
        self._thread = threading.Thread(target=self._run, name=f"send->{self.name}", daemon=True)
        self._thread.start()
        self._hb_channel: grpc.Channel | None = None
        if heartbeat_s > 0:
            # its own channel: a Push stream stalled by flow control must not delay the answers
            self._hb_channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._health = self._hb_channel.unary_unary(
                f"/{SERVICE.full_name}/Health",
                request_serializer=pb.Empty.SerializeToString,
                response_deserializer=pb.HealthReply.FromString,
            )
            # its connection now, while the link is idle: a busy sender's first heartbeat then
            # waits for an answer, not for a connection inside its deadline (the answer is not needed)
            self._warm_up = self._health.future(pb.Empty(), timeout=connect_timeout_s)
            self._watcher = threading.Thread(target=self._watch, name=f"heartbeat->{self.name}", daemon=True)
            self._watcher.start()

    def send(self, frame: TensorFrame) -> None:
        """Queue a frame for the link (blocks while the queue is full)."""
        if self._stopping.is_set():
            self._fail(frame, f"link to {self.name} closed")
            return
        if self.lost:  # no waiting for a peer that does not answer
            self._fail(frame, self.lost)
            return
        self._queue.put(frame)

    def set_link(self, rate_bps: float, delay_s: float) -> None:
        """Change the emulated link in place: frames not yet on it are paced and held by the new
        figures; the stream, the queue and the frames in flight are left as they are."""
        self.rate_bps = float(rate_bps)
        self.delay_ns = int(round(delay_s * 1e9))
        self._rate_changed.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued frames (up to timeout_s), then end the stream and the channel."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._channel.close()
        if self._hb_channel is not None:
            self._hb_channel.close()

    def load(self) -> tuple[int, int]:
        """(bytes this sender put on the link, frames waiting for it): the link's counters where
        the node paces it (a frame counts once its emulated transmission has ended)."""
        return self.bytes_out, self._queue.qsize() + (self._holding is not None)

    @property
    def busy(self) -> bool:
        """Frames are queued, or one is taken and not yet handed to the wire."""
        return self._holding is not None or not self._queue.empty()

    # -- internals -------------------------------------------------------------------------

    def _pace(self, frame: TensorFrame, size: int) -> None:
        now = time.time_ns()
        if frame.header.probe:  # a rate probe: the receiver times it from when it goes on the link
            frame.header.sent_ns = max(now, self._busy_until_ns)
        if self.rate_bps > 0:
            start = max(now, self._busy_until_ns)
            sleep_until(start)  # the link is still sending the previous frame
            tx_end = self._transmit(start, size * 8.0)
            self._busy_until_ns = tx_end
            frame.header.deliver_after_ns = tx_end + self.delay_ns
        elif self.delay_ns > 0:
            frame.header.hold_ns = self.delay_ns

    def _transmit(self, start_ns: int, bits: float) -> int:
        """When a frame of `bits` put on the link at start_ns has crossed it. A rate change while it
        crosses applies to the rest of it, as on a real link: a frame that began crawling in a
        trace's dead moment goes on at the next step's rate, not at the crawl's for minutes. So a
        frame with more than _RECHECK_NS still to cross waits here for a change until then (the
        loopback transfer still overlaps the end of its transmission)."""
        rate = self.rate_bps
        end = start_ns + int(bits * 1e9 / rate)
        while (left := end - time.time_ns()) > _RECHECK_NS and not self._stopping.is_set():
            self._rate_changed.wait((left - _RECHECK_NS) / 1e9)
            self._rate_changed.clear()
            if self.rate_bps > 0 and self.rate_bps != rate:
                now = time.time_ns()
                bits = max(0.0, bits - (now - start_ns) * rate / 1e9)
                start_ns, rate = now, self.rate_bps
                end = now + int(bits * 1e9 / rate)
        return end

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
                self._inflight = self._holding = item
                yield from self._messages(item)
                self._holding = None
                self.frames_out += 1
                self.bytes_out += size
                self._remember(item.header)
                self._sent(item)
                self._getting = True  # before the check: _run waits for `done` only while this is set
                while True:
                    if dead.is_set():
                        return
                    try:
                        item = self._queue.get(timeout=0.1)
                        self._holding = item if isinstance(item, TensorFrame) else None
                        break
                    except queue.Empty:
                        continue
                self._getting = False
                if dead.is_set():
                    self._carry = item
                    return
        finally:
            self._getting = False
            done.set()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, TensorFrame)
            self._holding = item
            why = self._connect()
            if why:
                log.error(why)
                self._holding = None
                self._fail(item, why)
                self._drain(why)
                continue
            self._inflight = None
            self._carry = None
            dead, done = threading.Event(), threading.Event()
            try:
                self._call = self._push.future(self._requests(item, dead, done))
                if self.lost:  # lost while the call was being made
                    self._call.cancel()
                self._call.result()
                return  # the iterator ended: closed
            except (grpc.RpcError, grpc.FutureCancelledError) as e:
                if self.lost:
                    msg = self.lost
                elif isinstance(e, grpc.RpcError):
                    msg = f"link to {self.name} at {self.address} failed: {e.code().name} {e.details()}"
                else:
                    msg = f"link to {self.name} at {self.address} cancelled"
                log.error(msg)
                dead.set()
                if self._getting:  # it may be taking a frame from the queue: let it carry it
                    done.wait(0.5)
                self._holding = None
                if self.lost:  # the cancel discarded what the silent peer had not read
                    for header, at in list(self._handed):
                        if at >= self._silent_since and header is not getattr(self._inflight, "header", None):
                            self._fail(TensorFrame(header, {}), msg)
                self._handed.clear()
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
            finally:
                self._call = None

    def _connect(self) -> str:
        """Wait until the channel is connected; why not ("" once it is): the connect timeout
        passed, or the heartbeat found the peer lost meanwhile."""
        ready = grpc.channel_ready_future(self._channel)
        deadline = time.monotonic() + self.connect_timeout_s
        try:
            while True:
                try:
                    ready.result(timeout=0.05)
                    return ""
                except grpc.FutureTimeoutError:
                    if self.lost:
                        return self.lost
                    if time.monotonic() >= deadline:
                        return f"peer {self.name} at {self.address} unreachable"
        finally:
            ready.cancel()

    def _watch(self) -> None:
        """The heartbeat: while the sender holds frames (or its peer is lost), ask the peer's
        Health every heartbeat_s, each call with the silence left as its deadline; silence for
        dead_after_s (counted from the last answer, or from when the sender became busy) takes
        the peer for lost; an answer from a lost peer brings it back."""
        since: float | None = None  # the last answer, or when the sender became busy
        while not self._stopping.wait(self.heartbeat_s):
            if not (self.lost or self.busy):
                since = None
                continue
            now = time.monotonic()
            if since is None:
                since = now
            try:
                self._health(pb.Empty(), timeout=max(since + self.dead_after_s - now, 0.05))
            except grpc.RpcError as e:
                why = f"{e.code().name}" if hasattr(e, "code") else str(e)
            else:
                since = time.monotonic()
                if self.lost:
                    log.info("peer %s at %s answers again", self.name, self.address)
                    self.lost = ""
                continue
            silent = time.monotonic() - since
            if not self.lost and silent >= self.dead_after_s and not self._stopping.is_set():
                why = f"peer {self.name} at {self.address} lost: no answer for {silent:.2f} s ({why})"
                self._peer_lost(why, since - self.heartbeat_s)

    def _peer_lost(self, why: str, silent_since: float) -> None:
        """Fail every frame held for the peer now: the Push call is cancelled (its handler fails
        the frame in flight, those handed to the wire since `silent_since`, and drains the
        queue), or the connect wait sees `lost` and does."""
        log.error(why)
        self._silent_since = silent_since
        self.lost = why
        call = self._call
        if call is not None:
            call.cancel()

    def _remember(self, header: pb.Frame) -> None:
        now = time.monotonic()
        self._handed.append((header, now))
        horizon = now - self.dead_after_s - 2 * self.heartbeat_s
        while self._handed and self._handed[0][1] < horizon:
            self._handed.popleft()

    def _sent(self, frame: TensorFrame) -> None:
        if self.on_sent is not None:
            try:
                self.on_sent(frame)
            except Exception:  # never let a callback kill the sender thread
                log.exception("on_sent callback")

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
        frame.header.lost = True  # it could not reach the peer: not the request's own failure
        if self.on_failed is not None:
            try:
                self.on_failed(frame, msg)
            except Exception:  # never let a callback kill the sender thread
                log.exception("on_failed callback")
        else:
            log.error("dropped frame %d: %s", frame.header.request_id, msg)
