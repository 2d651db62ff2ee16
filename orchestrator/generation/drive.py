"""Drive sequences through the pipeline token by token.

Each step of a sequence is one request on the source node's Drive stream (driving.driver): the
prefill carries the prompt, every later step the one token chosen at the step before. The source
device answers a step with its greedy choice (`next_token`), so the next step of that sequence can
only be sent once its answer is back; `in_flight` sequences interleave, which is what keeps a
pipeline of several stages busy. When a sequence ends (its tokens generated, or a step failed) the
next prompt starts in its place. The nodes keep each sequence's cache between its steps and free it
after its last one (Frame.sequence / step / last_step)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from common.decoding import NEXT_TOKEN
from orchestrator.driving.client import NodeClient
from orchestrator.driving.driver import DriveControl, Feed, Record, drive
from orchestrator.generation.decoder import DecoderIO
from orchestrator.generation.records import SequenceRun


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


def generate(
    source: NodeClient,
    io: DecoderIO,
    sequences: list[SequenceRun],
    *,
    in_flight: int,
    timeout_s: float = 600.0,
    on_step: Callable[[Record], None] | None = None,
    control: DriveControl | None = None,
) -> list[Record]:
    """Generate every sequence of `sequences` (filling their `generated`, `steps` and `error`),
    `in_flight` of them at once; returns the steps' records in the order they were sent. A step
    that fails ends its sequence with that error; the others go on."""
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
        while (feed := ready.get()) is not None:
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
            control=control,
        )
    finally:
        ready.put(None)  # a drive that ended early leaves no sender waiting for a step
        for seq in sequences:
            if not seq.done and not seq.error:
                seq.error = next((r.error for r in seq.steps if r.error), "") or "the drive ended before it did"
