"""Drive sequences through the pipeline token by token.

Each step of a sequence is one request on the source node's Drive stream (driving.driver): the
prefill carries the prompt, every later step the one token chosen at the step before. The source
device answers a step with its greedy choice (`next_token`), so the next step of that sequence can
only be sent once its answer is back; `in_flight` sequences interleave, which is what keeps a
pipeline of several stages busy. When a sequence ends (its tokens generated, or a step failed) the
next prompt starts in its place. The nodes keep each sequence's cache between its steps and free it
after its last one (Frame.sequence / step / last_step). A new plan starts with no cache anywhere: a
step resent under it (its device was lost, say) goes as a prefill of the prompt and every token
generated so far, which gives the same next token and builds the caches on the new plan."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from common.decoding import NEXT_TOKEN
from orchestrator.driving.client import NodeClient
from orchestrator.driving.driver import NOTHING_YET, DriveControl, Feed, Record, drive
from orchestrator.generation.decoder import DecoderIO
from orchestrator.generation.records import SequenceRun

WAIT_S = 0.05  # how long the drive waits for an answer to make a step of before it looks at resends


def step_feed(io: DecoderIO, seq: SequenceRun) -> Feed:
    """The next step of `seq`: its prompt first, then the last token it generated."""
    step = len(seq.generated)
    ids = seq.prompt if step == 0 else seq.generated[-1:]
    past = 0 if step == 0 else len(seq.prompt) + step - 1
    return Feed(
        io.step_feeds(ids, past),
        key=seq.index,
        sequence=seq.index + 1,  # 0 is no sequence
        step=step,
        last_step=step + 1 >= seq.max_new_tokens,
    )


def reprefill(io: DecoderIO, seq: SequenceRun) -> Feed:
    """The pending step of `seq` again, as a prefill: its whole context so far, no cache needed."""
    step = len(seq.generated)
    ids = seq.prompt + seq.generated
    return Feed(io.step_feeds(ids, 0), key=seq.index, sequence=seq.index + 1, last_step=step + 1 >= seq.max_new_tokens)


def generate(
    source: NodeClient,
    io: DecoderIO,
    sequences: list[SequenceRun],
    *,
    in_flight: int,
    timeout_s: float = 600.0,
    on_step: Callable[[Record], None] | None = None,
    control: DriveControl | None = None,
    on_start: Callable[[int], None] | None = None,
) -> list[Record]:
    """Generate every sequence of `sequences` (filling their `generated`, `steps` and `error`),
    `in_flight` of them at once; returns the steps' records in the order they were sent. A step
    that fails ends its sequence with that error; the others go on. `control` (a run whose world
    changes) has its resent steps re-prefilled; `on_start` is the drive's."""
    if in_flight < 1:
        raise ValueError("generate: in_flight must be at least 1")
    by_index = {s.index: s for s in sequences}
    waiting = list(reversed(sequences))  # popped from the end: in order
    ready: queue.Queue[Feed | None] = queue.Queue()
    lock = threading.Lock()
    running = 0

    def start_next() -> None:
        nonlocal running
        if waiting:
            running += 1
            ready.put(step_feed(io, waiting.pop()))
        elif running == 0:
            ready.put(None)  # every sequence is done

    def feeds() -> Iterator[Feed]:
        while True:
            try:
                feed = ready.get(timeout=WAIT_S)
            except queue.Empty:  # every step in flight: a resend may be due meanwhile
                yield NOTHING_YET
                continue
            if feed is None:
                return
            yield feed

    def answered(rec: Record) -> None:
        nonlocal running
        with lock:
            seq = by_index[rec.key]
            seq.steps.append(rec)
            token = None if rec.error or rec.outputs is None else rec.outputs.get(NEXT_TOKEN)
            if token is None:
                seq.error = rec.error or f"step {len(seq.steps) - 1} came back without {NEXT_TOKEN}"
            else:
                seq.generated.append(int(token.reshape(-1)[0]))
            if seq.done:
                running -= 1
                start_next()
            else:
                ready.put(step_feed(io, seq))
        if on_step is not None:
            on_step(rec)

    ctl = control or DriveControl()
    cached_under: dict[int, int] = {}  # sequence -> the plan its caches were built under

    def refeed(feed: Feed, resent: bool) -> Feed:
        """A step as it goes: a prefill where its caches are not on the nodes (a new plan), or may
        hold it already (a step sent again: a stage it reached kept its token)."""
        if feed.step and (resent or cached_under.get(feed.key) != ctl.plan):
            feed = reprefill(io, by_index[feed.key])
        if not feed.step:
            cached_under[feed.key] = ctl.plan
        return feed

    ctl.refeed = refeed
    with lock:
        for _ in range(min(in_flight, len(sequences))):
            start_next()
        if not sequences:
            ready.put(None)
    try:
        return drive(
            source,
            feeds(),
            total=sum(s.max_new_tokens for s in sequences),
            concurrency=in_flight,
            on_done=answered,
            timeout_s=timeout_s,
            control=ctl,
            on_start=on_start,
        )
    finally:
        ready.put(None)  # a drive that ended early leaves no sender waiting for a step
        for seq in sequences:
            if not seq.done and not seq.error:
                seq.error = next((r.error for r in seq.steps if r.error), "") or "the drive ended before it did"
