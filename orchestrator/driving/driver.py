"""Drive requests through the pipeline from the source node and collect what came back.

All requests travel on one Drive stream to the source node. Two ways to generate load:

- closed loop (rate_hz None): `concurrency` requests in flight; the next one is sent when an
  answer comes back. A stall holds the sender too, so only the requests in flight during the
  stall see it: a closed loop hides stalls from its own statistics (coordinated omission).
- open loop (rate_hz given): request i is due at t0 + i / rate_hz whatever the answers do, and
  its latency is measured from that due time (Record.intended_ns), not from when it could
  actually be sent: when the sender falls behind (a stall back-pressures the stream, or
  `max_in_flight` is reached) the requests go out as soon as they can, late, and the lateness
  counts in their latency. So a stall shows in the tail as every request it delayed.

A run whose world changes steers the drive through a DriveControl: `hold()` keeps new requests
back while it re-plans, `new_plan()` says the nodes now run another plan (their state of the old
one gone), `resend(ids)` sends requests again under it (their feeds are kept until answered; the
first answer wins, a later one is ignored), `refeed(feed, resent)` gives what a request goes as when
it is sent (a generation step whose sequence's cache is gone goes as a prefill), `end(why)` ends the drive at
once with every unanswered request failed for that reason. With `resend_lost`, a result a node
marked `lost` (its next device was gone) is not an answer: the request stays pending for a resend.

Inputs come from an iterator of Feeds pulled lazily, one per request and never one more than
is sent; the next feed is pulled before waiting for its turn (its due time, or a free slot),
so that pulling (a dataset prefetcher, say) stays off the timed path. An iterator whose next
request depends on answers (generation: a sequence's next step needs its last token) yields
NOTHING_YET while it has none: the sender sends what is to be resent meanwhile and asks again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from common import testbed_pb2 as pb
from common.tensors import TensorFrame
from orchestrator.driving.client import DriveStream, NodeClient

log = logging.getLogger("orchestrator.driving.driver")

CONNECT_TIMEOUT_S = 10.0
_POLL_S = 0.2
LOST_RETRY_S = 1.0  # a request a node gave back as lost is sent again after this, re-plan or not


@dataclass
class Feed:
    """The model inputs of one request; `key` is the caller's, copied to Record.key. A step of a
    generated sequence also says which (`sequence` > 0), its `step` (0: the prefill) and whether it
    is the sequence's `last_step`: the nodes keep the sequence's cache between its steps."""

    arrays: dict[str, np.ndarray]
    key: int = 0
    sequence: int = 0
    step: int = 0
    last_step: bool = False

    def frame(self, request_id: int, sent_ns: int) -> TensorFrame:
        header = pb.Frame(request_id=request_id, stage=0, sent_ns=sent_ns)
        header.sequence, header.step, header.last_step = self.sequence, self.step, self.last_step
        return TensorFrame(header, self.arrays)


@dataclass
class Timing:
    stage: int
    device: str
    recv_ns: int
    start_ns: int
    end_ns: int
    send_ns: int
    bytes_out: int
    serialize_ns: int = 0  # the sender's encoding of the frame that left this stage
    deserialize_ns: int = 0  # this node's decoding of the frame that reached it


@dataclass
class Record:
    """One request's round trip: driver clock (time.time_ns) for intended/sent/done, node stamps
    per stage. intended_ns is the scheduled send time in an open loop, sent_ns in a closed one."""

    id: int
    key: int
    intended_ns: int
    sent_ns: int
    done_ns: int = 0
    timings: list[Timing] = field(default_factory=list)
    error: str = ""
    outputs: dict[str, np.ndarray] | None = None
    resent: int = 0  # times it was sent again after a re-plan

    @property
    def latency_ms(self) -> float:
        """From the intended send time to the answer: an open loop's late sends count."""
        return (self.done_ns - self.intended_ns) / 1e6


NOTHING_YET = Feed({}, key=-1)  # yielded by a feed iterator that has no request ready now


class DriveControl:
    """The run's handle on a drive in progress (thread-safe; see the module docstring)."""

    def __init__(self, resend_lost: bool = False) -> None:
        self.resend_lost = resend_lost
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._resend: list[int] = []
        self._ended = threading.Event()
        self.why = ""
        self.pending: Callable[[], list[int]] = list  # set by drive(): the ids sent and not answered
        self.refeed: Callable[[Feed, bool], Feed] | None = None  # what a feed goes as (resent or not)
        self.plan = 0  # plans loaded since the drive began (new_plan)

    def hold(self) -> None:
        """Send no new request (nor resend) until release()."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @property
    def holding(self) -> bool:
        return not self._open.is_set()

    def resend(self, ids: list[int]) -> None:
        """Send these requests again (under the plan now loaded), before any new one."""
        with self._lock:
            self._resend.extend(i for i in ids if i not in self._resend)

    def new_plan(self) -> None:
        """The nodes were loaded with another plan: what they kept for the requests is gone."""
        self.plan += 1

    def take_resend(self) -> int | None:
        with self._lock:
            return self._resend.pop(0) if self._resend else None

    def end(self, why: str) -> None:
        """End the drive now: unanswered requests fail with `why`."""
        self.why = why
        self._ended.set()
        self._open.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_open(self, stop: threading.Event) -> bool:
        """Block while held; False when the drive is over meanwhile."""
        while not self._open.wait(_POLL_S):
            if stop.is_set():
                return False
        return not (stop.is_set() or self.ended)


def _wait_until(t_ns: int, stop: threading.Event) -> None:
    while not stop.is_set():
        remaining = t_ns - time.time_ns()
        if remaining <= 0:
            return
        time.sleep(min(remaining / 1e9, 0.1))


def drive(
    source: NodeClient,
    feeds: Iterator[Feed],
    *,
    total: int | None = None,
    duration_s: float | None = None,
    concurrency: int = 1,
    rate_hz: float | None = None,
    on_done: Callable[[Record], None] | None = None,
    timeout_s: float = 600.0,
    max_in_flight: int = 1024,
    control: DriveControl | None = None,
    on_start: Callable[[int], None] | None = None,
    keep: bool = True,
) -> list[Record]:
    """Send requests to the source node until `total` are sent, `duration_s` of sending has
    passed (whichever comes first; at least one must be given) or `feeds` ends; then wait for
    the answers. Closed loop with `concurrency` in flight, or open loop at `rate_hz` with at
    most `max_in_flight` (a safety bound). Returns the records by id.

    A request without an answer `timeout_s` after it was sent ends the run: it and every other
    unanswered request get `error` set. Errors from the pipeline are recorded, not raised; an
    unreachable source node (or a broken stream) raises NodeError; an exception from
    `feeds` is raised after the requests already sent are answered. `on_start(t0_ns)` is called
    as the first request goes out (a scenario's clock starts there); `control` steers the drive
    while the world changes (see DriveControl). With `keep` false an answered request is handed
    to `on_done` and forgotten, and only the unanswered ones are returned: a drive of any length
    then holds only what is in flight (a run keeps every record for its report)."""
    if total is None and duration_s is None:
        raise ValueError("drive: give total, duration_s or both")
    if total is not None and total < 0:
        raise ValueError(f"drive: total must be >= 0, got {total}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"drive: duration_s must be positive, got {duration_s}")
    if rate_hz is not None and rate_hz <= 0:
        raise ValueError(f"drive: rate_hz must be positive, got {rate_hz}")
    if concurrency < 1 or max_in_flight < 1:
        raise ValueError("drive: concurrency and max_in_flight must be at least 1")
    ctl = control or DriveControl()
    open_loop = rate_hz is not None
    period_ns = 1e9 / rate_hz if rate_hz is not None else 0.0
    duration_ns = None if duration_s is None else round(duration_s * 1e9)
    it = iter(feeds)

    slots = threading.Semaphore(max_in_flight if open_loop else concurrency)
    records: dict[int, Record] = {}
    pending: dict[int, Record] = {}  # sent, not answered
    kept: dict[int, Feed] = {}  # their inputs, for a resend
    lock = threading.Lock()
    sender_done = threading.Event()

    def pending_ids() -> list[int]:
        with lock:
            return sorted(pending)

    ctl.pending = pending_ids
    stop = threading.Event()  # the call is over: the sender gives up
    feed_error: list[BaseException] = []

    def pull(i: int, due_ns: int | None, t0: int | None) -> Feed | None:
        """The next feed, or None when request i is not to be sent."""
        if total is not None and i >= total:
            return None
        if duration_ns is not None and t0 is not None:
            if (due_ns if due_ns is not None else time.time_ns()) - t0 >= duration_ns:
                return None
        return next(it, None)

    def resends() -> Iterator[TensorFrame]:
        """Requests the run asked to send again, while any are queued."""
        while (rid := ctl.take_resend()) is not None:
            with lock:
                rec, feed = pending.get(rid), kept.get(rid)
            if rec is None or feed is None:  # answered meanwhile
                continue
            rec.resent += 1
            if ctl.refeed is not None:
                feed = ctl.refeed(feed, True)
                with lock:
                    kept[rid] = feed
            yield feed.frame(rid, time.time_ns())

    def requests() -> Iterator[TensorFrame]:
        t0: int | None = None
        i = 0
        try:
            while not stop.is_set():
                if not ctl.wait_open(stop):
                    return
                yield from resends()
                due = None if t0 is None or not open_loop else t0 + round(i * period_ns)
                feed = pull(i, due, t0)  # before the wait: off the timed path
                if feed is None:
                    break
                if feed is NOTHING_YET:  # none ready: what waits to be resent goes meanwhile
                    if not ctl.wait_open(stop):
                        return
                    yield from resends()
                    continue
                if t0 is None:  # the clock starts with the first request, its feed in hand
                    t0 = time.time_ns()
                    due = t0 if open_loop else None
                    if on_start is not None:
                        on_start(t0)
                if due is not None:
                    _wait_until(due, stop)
                while not slots.acquire(timeout=_POLL_S / 4):
                    if stop.is_set():
                        return
                    if not ctl.holding:  # resends go out while new requests wait for a slot
                        yield from resends()
                if not ctl.wait_open(stop):
                    return
                if ctl.refeed is not None:
                    feed = ctl.refeed(feed, False)
                now = time.time_ns()
                rec = Record(id=i, key=feed.key, intended_ns=now if due is None else due, sent_ns=now)
                with lock:
                    records[i] = pending[i] = rec
                    kept[i] = feed
                yield feed.frame(i, now)
                i += 1
            # everything is sent: stay open for resends until every request is answered
            while not stop.is_set() and pending_ids():
                if ctl.wait_open(stop):
                    yield from resends()
                time.sleep(_POLL_S / 4)
        except Exception as e:  # the feeds broke: end the stream, raise once the rest is home
            feed_error.append(e)
        finally:
            sender_done.set()

    timed_out = threading.Event()

    def watchdog(call: DriveStream) -> None:
        while not stop.wait(_POLL_S / 4):
            if ctl.ended or (sender_done.is_set() and not pending_ids()):
                call.cancel()  # ended early, or everything is answered (a dropped duplicate never returns)
                return
            with lock:
                oldest = min((r.sent_ns for r in pending.values()), default=None)
            if oldest is not None and time.time_ns() - oldest > timeout_s * 1e9:
                timed_out.set()
                call.cancel()
                return

    source.wait_ready(min(CONNECT_TIMEOUT_S, timeout_s))
    responses = source.drive(requests())
    guard = threading.Thread(target=watchdog, args=(responses,), name="drive-watchdog", daemon=True)
    guard.start()
    try:
        for result in responses:
            if ctl.ended:  # end() failed what was unanswered then: an answer coming after is not counted
                break
            frame = result.header
            now = time.time_ns()
            if frame.lost and ctl.resend_lost:  # not an answer: it waits for the re-plan's resend
                with lock:
                    rec = pending.get(frame.request_id)
                if rec is not None:
                    # a re-plan resends it; if none comes (the device was only unreachable), retry
                    retry = threading.Timer(LOST_RETRY_S, ctl.resend, args=([frame.request_id],))
                    retry.daemon = True
                    retry.start()
                continue
            with lock:
                rec = pending.pop(frame.request_id, None)
                kept.pop(frame.request_id, None)
                if rec is not None and not keep:
                    del records[frame.request_id]
            if rec is None:
                if keep and frame.request_id not in records:
                    log.warning("result for unknown request %d ignored", frame.request_id)
                continue  # a resent request's second answer
            rec.done_ns = now
            rec.error = frame.error
            rec.timings = [
                Timing(
                    t.stage,
                    t.device,
                    t.recv_ns,
                    t.start_ns,
                    t.end_ns,
                    t.send_ns,
                    t.bytes_out,
                    t.serialize_ns,
                    t.deserialize_ns,
                )
                for t in frame.timings
            ]
            if not frame.error:
                rec.outputs = result.arrays
            slots.release()
            if on_done is not None:
                on_done(rec)
            if sender_done.is_set() and not pending_ids():
                break
    finally:
        stop.set()
        responses.cancel()
        guard.join(timeout=1.0)
    why = f"no result within {timeout_s:g} s" if timed_out.is_set() else "no result: the stream ended"
    why = ctl.why or why
    with lock:
        for rec in pending.values():
            rec.error = rec.error or why
        out = [records[i] for i in sorted(records)]
    if timed_out.is_set():
        log.warning("drive: %d request(s) without a result after %g s", len(pending), timeout_s)
    if feed_error:
        raise feed_error[0]
    return out
