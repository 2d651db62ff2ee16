"""Drive requests through the pipeline from the source node and collect what came back.

The driver keeps `concurrency` requests in flight on one Drive stream (closed loop). Inputs
come from a small pool made before the run, so that feeding never starves the first stage
and the whole model's answer for each pool entry can be computed once, after the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from common import testbed_pb2 as pb
from common.grpc_options import CHANNEL_OPTIONS
from common.rpc import node_stub
from common.tensors import TensorFrame


@dataclass
class Timing:
    stage: int
    device: str
    recv_ns: int
    start_ns: int
    end_ns: int
    send_ns: int
    bytes_out: int


@dataclass
class Record:
    """One request's round trip: driver clock for send/done, node stamps per stage."""

    id: int
    pool_index: int
    sent_ns: int
    done_ns: int = 0
    timings: list[Timing] = field(default_factory=list)
    error: str = ""
    outputs: dict[str, np.ndarray] | None = None

    @property
    def latency_ms(self) -> float:
        return (self.done_ns - self.sent_ns) / 1e6


def drive(source_address: str, pool: list[dict[str, np.ndarray]], total: int, concurrency: int,
          on_done: Callable[[Record], None] | None = None, timeout_s: float = 600.0) -> list[Record]:
    """Send `total` requests (request i uses pool[i % len(pool)]), `concurrency` in flight."""
    frames = [{name: np.asarray(arr, order="C") for name, arr in feeds.items()} for feeds in pool]
    slots = threading.Semaphore(concurrency)
    records: dict[int, Record] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def requests():
        for i in range(total):
            while not slots.acquire(timeout=0.2):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            k = i % len(pool)
            now = time.time_ns()
            with lock:
                records[i] = Record(id=i, pool_index=k, sent_ns=now)
            yield TensorFrame(pb.Frame(request_id=i, stage=0, sent_ns=now), frames[k])
        # keep the stream open until every answer is home, so the node can send them
        while not stop.is_set():
            stop.wait(0.2)

    done = 0
    with grpc.insecure_channel(source_address, options=CHANNEL_OPTIONS) as ch:
        responses = node_stub(ch).Drive(requests(), timeout=timeout_s)  # frame codec both ways
        try:
            for result in responses:
                frame = result.header
                now = time.time_ns()
                with lock:
                    rec = records[frame.request_id]
                rec.done_ns = now
                rec.error = frame.error
                rec.timings = [Timing(t.stage, t.device, t.recv_ns, t.start_ns, t.end_ns, t.send_ns,
                                      t.bytes_out) for t in frame.timings]
                if not frame.error:
                    rec.outputs = result.arrays
                slots.release()
                done += 1
                if on_done is not None:
                    on_done(rec)
                if done == total:
                    break
        finally:
            stop.set()
            responses.cancel()
    return [records[i] for i in sorted(records)]
