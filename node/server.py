"""The node: a gRPC server that runs its stages and moves frames on to the next device.

Threads: gRPC threads receive (one per Push stream, one per Drive stream plus its reader),
one compute worker per stage drains that stage's bounded inbound queue, and one PeerSender
thread per peer sends. So stage k computes request n while stage k-1 computes n+1, and a full
queue blocks the receiver, which pushes back on the sender through gRPC flow control."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np

from common import testbed_pb2 as pb
from common import testbed_pb2_grpc as pb_grpc
from common.cpu_quota import ort_threads
from common.decoding import LOGITS, NEXT_TOKEN, greedy_token
from common.grpc_options import SERVER_OPTIONS
from common.rpc import add_node_servicer
from common.tensors import NO_REQUEST, TensorFrame, frame_nbytes
from node import cgroup_stats, resources, shaping, tc
from node.files import FileRefused
from node.files import store as file_store
from node.kv_cache import SequenceCaches
from node.links import DEAD_AFTER_S, PeerSender, sleep_until
from node.stage import Stage, StageConfig, cap_malloc_arenas, release_free_memory

log = logging.getLogger("node.server")

DEFAULT_QUEUE_DEPTH = 4
RELEASE_WAIT_S = 10.0  # how long a Load waits for the pipeline retired before it to free its sessions
PROBE_MAX_BYTES = 16 << 20
REQUOTA_WAIT_S = 20.0  # a stage mid-frame under a small quota finishes it before reopening
MAX_HOLD_S = 60.0  # a frame asking its link to hold it longer is refused: it would stall the link
_INPUT_END = object()
_POLL_S = 0.2


@dataclass
class _Pipeline:
    """Everything one Load created; a reload builds a new one and closes the old."""

    device: str
    num_stages: int
    source_device: str
    first_device: str
    queue_depth: int
    threads: int
    epoch: int = 0  # the plan this pipeline runs: frames of another are dropped (a re-plan resends)
    stages: dict[int, Stage] = field(default_factory=dict)
    queues: dict[int, queue.Queue[tuple[TensorFrame, int]]] = field(default_factory=dict)
    senders: dict[str, PeerSender] = field(default_factory=dict)
    workers: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    want_threads: int = 0  # set by Requota: each stage worker reopens its session with it between frames
    resize_error: str = ""

    def resize(self, stage: Stage, limits: resources.Limits) -> None:
        """Between two frames of a stage: reopen its session if Requota asked for another thread count."""
        want = self.want_threads
        if want and stage.threads != want and not self.resize_error:
            try:
                stage.reopen(want, limits)
            except Exception as e:
                log.exception("stage %d: reopening its session with %d threads", stage.config.index, want)
                self.resize_error = f"stage {stage.config.index}: {type(e).__name__}: {e}"

    @property
    def is_source(self) -> bool:
        return self.device == self.source_device

    def put(self, index: int, item: tuple[TensorFrame, int]) -> bool:
        """Blocking put that gives up when the pipeline is being replaced."""
        q = self.queues[index]
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> tuple[int, int]:
        self.stop.set()
        frames = nbytes = 0
        for s in self.senders.values():
            s.close(timeout_s=2.0)
            frames += s.frames_out
            nbytes += s.bytes_out
        for w in self.workers:
            w.join(timeout=2.0)
        return frames, nbytes


class _DelayLine:
    """Holds the frames of one incoming link until each one's due time, in arrival order.

    Frames of one link arrive in order with non-decreasing due times, so one thread sleeping
    until the head frame's time is enough, and receiving goes on meanwhile (a frame's arrival
    time must not wait for the previous frame's release)."""

    def __init__(self, release: Callable[[TensorFrame, int, int], None], depth: int = 256) -> None:
        self._release = release
        self._queue: queue.Queue[tuple[int, int, TensorFrame] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="delay-line", daemon=True)
        self._thread.start()

    def put(self, arrived_ns: int, due_ns: int, frame: TensorFrame) -> None:
        self._queue.put((arrived_ns, due_ns, frame))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            arrived, due, frame = item
            sleep_until(due)
            try:
                self._release(frame, arrived, due)
            except Exception:
                log.exception("routing frame %d", frame.header.request_id)


class _LinkHolds:
    """What the delay lines really held, per upstream device: the fidelity check reads it
    (StatsReply.holds), so a late timer or a wrong hold shows instead of the configured delay."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_device: dict[str, pb.LinkHold] = {}

    def add(self, device: str, asked_ns: int, held_ns: int) -> None:
        with self._lock:
            h = self._by_device.setdefault(device, pb.LinkHold(device=device))
            h.frames += 1
            h.asked_ns += asked_ns
            h.held_ns += held_ns
            h.max_late_ns = max(h.max_late_ns, held_ns - asked_ns)

    def snapshot(self) -> list[pb.LinkHold]:
        with self._lock:
            return [pb.LinkHold.FromString(h.SerializeToString()) for h in self._by_device.values()]


CLOCK_OFFSET_ENV = "TESTBED_CLOCK_OFFSET_NS"


def clock_offset_from_env(device: str, env: dict[str, str] | None = None) -> int:
    """This device's clock offset in ns from $TESTBED_CLOCK_OFFSET_NS, to emulate devices whose
    clocks are not synchronised: one integer for every node, or `device=ns` entries separated by
    commas (`tablet=3000000000,watch=-20000000`; a device not named: 0). The variable passes
    from the orchestrator to the local runtime's node processes like any other."""
    text = (os.environ if env is None else env).get(CLOCK_OFFSET_ENV, "").strip()
    if not text:
        return 0
    if "=" not in text:
        return int(text)
    offsets: dict[str, int] = {}
    for entry in text.split(","):
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"${CLOCK_OFFSET_ENV}: {entry!r} is not device=ns")
        offsets[name.strip()] = int(value)
    return offsets.get(device, 0)


class NodeServicer(pb_grpc.NodeServicer):
    """The Node service of one emulated device."""

    def __init__(
        self,
        device: str,
        *,
        use_cuda: bool = False,
        limits: resources.Limits | None = None,
        connect_timeout_s: float = 10.0,
        clock_offset_ns: int | None = None,
    ) -> None:
        self.device = device
        # added to the node's stamps and Health.now_ns only (a device whose clock is off; pacing
        # and link delays keep the real clock); default: from $TESTBED_CLOCK_OFFSET_NS
        if clock_offset_ns is None:
            clock_offset_ns = clock_offset_from_env(device)
        self.clock_offset_ns = clock_offset_ns
        self.use_cuda = use_cuda
        self.connect_timeout_s = connect_timeout_s
        self.limits = limits or resources.limits()
        self._pipe: _Pipeline | None = None
        self._load_lock = threading.Lock()
        self._released = threading.Event()  # the last retired pipeline's sessions are gone
        self._released.set()
        self._count_lock = threading.Lock()
        self._pending: dict[int, queue.Queue[object]] = {}
        self.frames_in = self.bytes_in = 0
        self._closed_frames_out = self._closed_bytes_out = 0
        self._results_out = self._result_bytes_out = 0
        self._holds = _LinkHolds()
        self._probes: dict[str, pb.LinkProbe] = {}  # the last rate probe from each upstream device
        # request ids on this node (arrival, or ingress on the source, until handed to the wire):
        # what a crash of this node would lose
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self.frames_refused = 0  # frames answered with an error unread: malformed, or asking what no frame may
        self.kv = SequenceCaches()  # the caches its stages keep for the sequences being generated

    def now_ns(self) -> int:
        """This node's clock for stamps: time.time_ns(), plus the planted offset if any."""
        return time.time_ns() + self.clock_offset_ns

    # -- service ---------------------------------------------------------------------------

    def Load(self, request: pb.LoadRequest, context: grpc.ServicerContext | None = None) -> pb.LoadReply:
        """Build the stage sessions and peer links; replaces a previous Load. Never raises."""
        with self._load_lock:
            try:
                new = self._build(request)
            except Exception as e:
                log.error("load failed: %s: %s", type(e).__name__, e)
                return pb.LoadReply(ok=False, error=f"{type(e).__name__}: {e}")
            old, self._pipe = self._pipe, new
            self.kv.clear()  # sequences of the plan before start again with a prefill
            if old is not None:  # in the background: a link to a lost peer may take seconds to close
                self._released = threading.Event()
                threading.Thread(target=self._retire, args=(old, self._released), name="retire", daemon=True).start()
            for idx, stage in new.stages.items():
                t = threading.Thread(target=self._work, args=(new, stage), name=f"stage-{idx}", daemon=True)
                new.workers.append(t)
                t.start()
            providers = sorted({p for s in new.stages.values() for p in s.providers}) or ["CPUExecutionProvider"]
            log.info(
                "loaded %s: stages %s of %d, source %s, threads %d, quota %s",
                self.device,
                sorted(new.stages),
                new.num_stages,
                new.source_device,
                new.threads,
                self.limits.cpu_quota,
            )
            return pb.LoadReply(
                ok=True,
                threads=new.threads,
                cpu_quota=self.limits.cpu_quota or 0.0,
                providers=",".join(providers),
                shaping=sh.readback if (sh := shaping.current()) is not None else "",
                netem=bool(sh is not None and sh.netem),
            )

    def Push(self, request_iterator: Iterator[TensorFrame], context: grpc.ServicerContext) -> pb.Empty:
        """Frames from one upstream node (decoded by the frame codec: arrays are views into the
        received message); link delay honoured before routing.

        A frame that cannot be read, or asks to be held longer than MAX_HOLD_S, is refused
        (`_refuse`): it goes home as an error and the stream goes on."""
        line: _DelayLine | None = None
        try:
            for frame in request_iterator:
                arrived = time.time_ns()
                self._count_in(frame)
                try:
                    due = frame.header.deliver_after_ns
                    if frame.header.hold_ns:
                        due = max(due, arrived + frame.header.hold_ns)
                    why = frame.invalid
                    if not why and due - arrived > MAX_HOLD_S * 1e9:
                        why = f"asks its link to hold it {(due - arrived) / 1e9:.0f} s, more than {MAX_HOLD_S:g} s"
                    if why:
                        self._refuse(frame, why)
                        continue
                    if not frame.header.probe:
                        self._hold(frame)
                    if line is None and due <= arrived:
                        self._release(frame, arrived, due)
                        continue
                    if line is None:
                        line = _DelayLine(self._release)
                    line.put(arrived, due, frame)
                except Exception as e:  # this frame only: the stream goes on
                    log.exception("frame %d from upstream", frame.header.request_id)
                    self._refuse(frame, f"{type(e).__name__}: {e}")
        finally:
            if line is not None:
                line.close()
        return pb.Empty()

    def Drive(self, request_iterator: Iterator[TensorFrame], context: grpc.ServicerContext) -> Iterator[TensorFrame]:
        """The driver's stream on the source node: requests in, results (or errors) out.

        Ends when the driver has closed its side and every request it sent has come back. A frame
        that cannot be read, or is no request, is answered at once with an error (`_answer`: its
        request_id where it could be read, else NO_REQUEST) and the stream goes on."""
        out: queue.Queue[object] = queue.Queue()
        received = 0

        def pump() -> None:
            nonlocal received
            try:
                for frame in request_iterator:
                    self._count_in(frame)
                    received += 1
                    try:
                        self._ingress(frame, out)
                    except Exception as e:  # this request only: the stream goes on
                        log.exception("request %d", frame.header.request_id)
                        if self._pending.get(frame.header.request_id) is out:
                            del self._pending[frame.header.request_id]
                        self._answer(frame, out, f"{type(e).__name__}: {e}")
            except Exception as e:  # the driver went away
                log.debug("drive input ended: %s", e)
            finally:
                out.put(_INPUT_END)

        threading.Thread(target=pump, name="drive-in", daemon=True).start()
        returned = 0
        ended = False
        while not (ended and returned >= received):
            try:
                item = out.get(timeout=_POLL_S)
            except queue.Empty:
                if not context.is_active():
                    return
                continue
            if item is _INPUT_END:
                ended = True
                continue
            assert isinstance(item, TensorFrame)
            returned += 1
            with self._count_lock:
                self._results_out += 1
                self._result_bytes_out += frame_nbytes(item)
            yield item

    def SetLink(self, request: pb.Peer, context: grpc.ServicerContext | None = None) -> pb.Peer:
        """Change one outgoing link in place. Where tc shapes it (Peer.tc_rate_bps > 0): its htb
        class's rate, read back from the kernel, and its delay by netem where the kernel has it, else
        by this node's hold (Peer.tc_delay_s); loaded or not. Otherwise: the rate this node paces and
        the delay it holds (a loaded pipeline's link). Replies with what holds."""
        p = self._pipe
        sender = p.senders.get(request.device) if p is not None else None
        by_tc = request.tc_rate_bps > 0
        why = ""
        if request.rate_bps < 0 or request.delay_s < 0 or request.tc_delay_s < 0:
            why = f"link {self.device}->{request.device}: rate and delay must be >= 0"
        elif sender is None and not by_tc:
            why = f"node {self.device} has no link to {request.device!r}" + ("" if p else " (not loaded)")
        held: shaping.LinkSpec | None = None
        if not why and by_tc:
            sh = shaping.current()
            ip = request.ip or (sh.ip_of(request.device) if sh is not None else "")
            try:
                held = shaping.change(request.device, ip, request.tc_rate_bps, request.tc_delay_s)
            except (ValueError, tc.TcError) as e:
                why = f"link {self.device}->{request.device}: {e}"
        if why:
            if context is None:
                raise ValueError(why)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        reply = pb.Peer(device=request.device)
        if held is not None:
            sh = shaping.current()
            hold = sh.node_delay_s.get(held.ip, 0.0) if sh is not None else 0.0
            if sender is not None:
                sender.set_link(sender.rate_bps, hold)
            reply.ip, reply.tc_rate_bps, reply.tc_delay_s, reply.delay_s = held.ip, held.rate_bps, held.delay_s, hold
            log.info(
                "link to %s: tc class at %d bit/s, delay %.3f ms by %s",
                request.device,
                held.rate_bps,
                held.delay_s * 1e3,
                "the node" if hold else "netem" if held.delay_s else "nobody",
            )
        else:
            sender.set_link(request.rate_bps, request.delay_s)
            log.info(
                "link to %s: paced at %d bit/s, held %.3f ms", request.device, request.rate_bps, request.delay_s * 1e3
            )
        if sender is not None:
            reply.address, reply.rate_bps, reply.delay_s = sender.address, int(sender.rate_bps), sender.delay_ns / 1e9
        return reply

    def Requota(self, request: pb.Empty, context: grpc.ServicerContext | None = None) -> pb.LoadReply:
        """Re-read the CPU quota this node runs under (a live cgroup update) and size the stages' ORT
        threads to it (`ort_threads`, as the orchestrator picks them for a Load): each stage worker
        reopens its session with the new count between two frames. Replies once they have. Never raises."""
        with self._load_lock:
            try:
                self.limits = resources.limits()
                p = self._pipe
                want = ort_threads(self.limits.cpu_quota, self.limits.cores)
                if p is not None:
                    p.want_threads = want
                    deadline = time.monotonic() + REQUOTA_WAIT_S
                    while any(st.threads != want for st in p.stages.values()) and not p.stop.is_set():
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"stage sessions not reopened within {REQUOTA_WAIT_S:g} s")
                        if p.resize_error:
                            raise RuntimeError(p.resize_error)
                        time.sleep(0.01)
                    p.threads = want
            except Exception as e:
                log.error("requota failed: %s: %s", type(e).__name__, e)
                return pb.LoadReply(ok=False, error=f"{type(e).__name__}: {e}", cpu_quota=self.limits.cpu_quota or 0.0)
            log.info("quota %s: %d ORT threads", self.limits.cpu_quota, want)
            return pb.LoadReply(ok=True, threads=want, cpu_quota=self.limits.cpu_quota or 0.0)

    def Probe(self, request: pb.ProbeRequest, context: grpc.ServicerContext | None = None) -> pb.Empty:
        """Put one rate probe on the link to a peer, unless frames are waiting for that link."""
        p = self._pipe
        sender = p.senders.get(request.device) if p is not None else None
        if sender is None or not 0 < request.bytes <= PROBE_MAX_BYTES:
            why = f"node {self.device}: no loaded link to {request.device!r}, or probe size {request.bytes} bytes"
            if context is None:
                raise ValueError(why)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, why)
        if not sender.busy:
            frame = TensorFrame(pb.Frame(request_id=-1, probe=True, epoch=p.epoch), {})
            frame.arrays["probe"] = np.zeros(request.bytes, np.uint8)
            frame.header.timings.add(stage=-1, device=self.device)
            sender.send(frame)
        return pb.Empty()

    def Put(self, request_iterator: Iterator[pb.FileChunk], context: grpc.ServicerContext) -> pb.FileReply:
        """Receive a file into the node's store (node/files.py): a stage model for a node that shares
        no folder with the orchestrator. Never raises: a refused or broken stream is answered."""
        try:
            got = file_store().put(request_iterator)
        except FileRefused as e:
            log.warning("file refused: %s", e)
            return pb.FileReply(ok=False, error=str(e))
        except Exception as e:  # the sender went away, the disk filled: nothing was kept
            log.warning("file not received: %s: %s", type(e).__name__, e)
            return pb.FileReply(ok=False, error=f"{type(e).__name__}: {e}")
        if not got.had:
            log.info("received %s (%d bytes)", got.path, got.size)
        return pb.FileReply(ok=True, path=str(got.path), bytes=got.size, had=got.had)

    def Has(self, request: pb.FileChunk, context: grpc.ServicerContext | None = None) -> pb.FileReply:
        """Whether the node's store holds this file (name, size and sha256) already."""
        try:
            path = file_store().has(request.name, request.size, request.sha256)
        except (FileRefused, OSError) as e:
            return pb.FileReply(ok=False, error=str(e))
        if path is None:
            return pb.FileReply(ok=True)
        return pb.FileReply(ok=True, path=str(path), bytes=request.size, had=True)

    def Measure(self, request: pb.MeasureRequest, context: grpc.ServicerContext | None = None) -> pb.MeasureReply:
        """Run a measurement probe beside this node (node/measure.py). Never raises: a probe that
        fails is answered with ok=False and the tail of its stderr."""
        from node import measure

        try:
            out = measure.run(request.probe, list(request.args), request.detach, request.timeout_s)
        except measure.ProbeError as e:
            log.warning("measure: %s", e)
            return pb.MeasureReply(ok=False, error=str(e))
        return pb.MeasureReply(ok=True, json=out)

    def Health(self, request: pb.Empty, context: grpc.ServicerContext | None = None) -> pb.HealthReply:
        loaded = self._pipe is not None
        return pb.HealthReply(
            device=self.device, loaded=loaded, status="ready" if loaded else "idle", now_ns=self.now_ns()
        )

    def Stats(self, request: pb.Empty, context: grpc.ServicerContext | None = None) -> pb.StatsReply:
        p = self._pipe
        frames_out = self._closed_frames_out + self._results_out
        bytes_out = self._closed_bytes_out + self._result_bytes_out
        if p is not None:
            for s in p.senders.values():
                frames_out += s.frames_out
                bytes_out += s.bytes_out
        return pb.StatsReply(
            device=self.device,
            frames_in=self.frames_in,
            frames_out=frames_out,
            bytes_in=self.bytes_in,
            bytes_out=bytes_out,
            rss_bytes=resources.rss_bytes(),
            peak_rss_bytes=resources.peak_rss_bytes(),
            cpu_seconds=resources.cpu_seconds(),
            cpu_quota=self.limits.cpu_quota or 0.0,
            threads=p.threads if p is not None else ort_threads(self.limits.cpu_quota, self.limits.cores),
            holds=self._holds.snapshot(),
            probes=list(self._probes.values()),
            links=self._link_loads(p),
            held_ids=self.held_ids(),
            cgroup=cgroup_stats.read(),
            kv_cache_bytes=self.kv.nbytes,
            peak_kv_cache_bytes=self.kv.peak_nbytes,
            sequences=self.kv.sequences,
        )

    def _link_loads(self, p: _Pipeline | None) -> list[pb.LinkLoad]:
        """Each outgoing link's counters: tc's where tc shapes it, the sender's pacing otherwise."""
        if p is None:
            return []
        now = time.time_ns()
        sh = shaping.current()
        by_ip = shaping.loads() if sh is not None and sh.classes else {}
        out = []
        for device, sender in p.senders.items():
            ip = sh.ip_of(device) if sh is not None else ""
            sent, backlog = by_ip[ip] if ip in by_ip else sender.load()
            out.append(pb.LinkLoad(device=device, sent_bytes=sent, backlog=backlog, at_ns=now))
        return out

    def close(self) -> None:
        """Stop workers and links (the server itself is stopped by its owner)."""
        with self._load_lock:
            old, self._pipe = self._pipe, None
            if old is not None:
                self._retire(old)

    # -- building --------------------------------------------------------------------------

    def _build(self, req: pb.LoadRequest) -> _Pipeline:
        if req.device and req.device != self.device:
            raise ValueError(f"load for device {req.device!r} sent to node {self.device!r}")
        if req.num_stages <= 0:
            raise ValueError("num_stages must be positive")
        if not req.source_device:
            raise ValueError("source_device is empty")
        peers = {p.device: p for p in req.peers if p.device != self.device}
        known = set(peers) | {self.device}
        for spec in req.stages:
            if not 0 <= spec.index < req.num_stages:
                raise ValueError(f"stage index {spec.index} outside 0..{req.num_stages - 1}")
            target = spec.next_device or req.source_device
            if target not in known:
                raise ValueError(f"stage {spec.index}: next device {target!r} is not among the peers")
        if self.device == req.source_device and req.first_device not in known:
            raise ValueError(f"first device {req.first_device!r} is not among the peers")
        if self.device != req.source_device and req.source_device not in known:
            raise ValueError(f"source device {req.source_device!r} is not among the peers")

        # tc first: a link that cannot be shaped refuses the Load with tc's own message
        node_delay: dict[str, float] = {}
        if any(p.tc_rate_bps > 0 or p.tc_delay_s > 0 for p in peers.values()):
            for name, p in peers.items():
                if (p.tc_rate_bps > 0 or p.tc_delay_s > 0) and not p.ip:
                    raise ValueError(f"peer {name}: tc shaping asked without its ip")
            node_delay = shaping.ensure(
                [
                    shaping.LinkSpec(name, p.ip, p.tc_rate_bps, p.tc_delay_s)
                    for name, p in peers.items()
                    if p.tc_rate_bps > 0 or p.tc_delay_s > 0
                ]
            ).node_delay_s

        depth = req.queue_depth if req.queue_depth > 0 else DEFAULT_QUEUE_DEPTH
        if req.stages:  # sessions built where the last retired ones were freed, not beside them
            self._released.wait(timeout=RELEASE_WAIT_S)
            release_free_memory()  # and what ended since (streams, frames of an earlier load)
        stages: dict[int, Stage] = {}
        for spec in req.stages:
            cfg = StageConfig(
                index=spec.index,
                model_path=spec.model_path,
                inputs=list(spec.inputs),
                outputs=list(spec.outputs),
                forward=list(spec.forward),
                next_device=spec.next_device,
                memory_mode=spec.memory_mode or "default",
                state=dict(zip(spec.state_inputs, spec.state_outputs, strict=False)),
            )
            if len(spec.state_inputs) != len(spec.state_outputs):
                raise ValueError(
                    f"stage {spec.index}: {len(spec.state_inputs)} cache inputs, {len(spec.state_outputs)} outputs"
                )
            if cfg.memory_mode not in ("default", "lean"):
                raise ValueError(f"stage {spec.index}: unknown memory_mode {spec.memory_mode!r} (default or lean)")
            stages[spec.index] = Stage(cfg, threads=req.threads, limits=self.limits, use_cuda=self.use_cuda)
        threads = (
            next(iter(stages.values())).threads
            if stages
            else (req.threads or ort_threads(self.limits.cpu_quota, self.limits.cores))
        )
        pipe = _Pipeline(
            device=self.device,
            num_stages=req.num_stages,
            source_device=req.source_device,
            first_device=req.first_device,
            queue_depth=depth,
            threads=threads,
            epoch=req.epoch,
            stages=stages,
            queues={i: queue.Queue(maxsize=depth) for i in stages},
        )
        for name, peer in peers.items():
            pipe.senders[name] = PeerSender(
                peer.address,
                peer.rate_bps,
                peer.delay_s + node_delay.get(peer.ip, 0.0),
                name=name,
                queue_depth=depth,
                connect_timeout_s=self.connect_timeout_s,
                on_failed=self._on_link_failed,
                on_sent=self._unhold,
                dead_after_s=peer.dead_after_s or DEAD_AFTER_S,
            )
        return pipe

    def _retire(self, pipe: _Pipeline, released: threading.Event | None = None) -> None:
        """Stop a pipeline: its sessions first (their memory given back at once, and a Load waiting to
        build its own told), then its links (a link to a lost peer may take seconds to close)."""
        pipe.stop.set()
        for w in pipe.workers:
            w.join(timeout=2.0)
        pipe.stages.clear()  # its sessions close here, not when the last reference goes
        release_free_memory()
        if released is not None:
            released.set()
        frames, nbytes = pipe.close()
        for q in pipe.queues.values():  # frames its stages never took are gone with it
            for frame, _ in list(q.queue):
                self._unhold(frame)
        self._closed_frames_out += frames
        self._closed_bytes_out += nbytes

    # -- routing ---------------------------------------------------------------------------

    def held_ids(self) -> list[int]:
        """Request ids on this node now: queued, computing, held for a link's delay or waiting
        to be sent (on the source: from ingress until forwarded)."""
        with self._held_lock:
            return sorted(self._held)

    def _hold(self, frame: TensorFrame) -> None:
        with self._held_lock:
            self._held.add(frame.header.request_id)

    def _unhold(self, frame: TensorFrame) -> None:
        with self._held_lock:
            self._held.discard(frame.header.request_id)

    def _count_in(self, frame: TensorFrame) -> None:
        size = frame_nbytes(frame)
        with self._count_lock:
            self.frames_in += 1
            self.bytes_in += size

    def _release(self, frame: TensorFrame, arrived_ns: int, due_ns: int) -> None:
        """A frame its link emulation lets go: the hold it really got is counted, then a probe is
        dropped and any other frame routed."""
        released = time.time_ns()
        if due_ns > arrived_ns:
            timings = frame.header.timings
            self._holds.add(timings[-1].device if timings else "", due_ns - arrived_ns, released - arrived_ns)
        if not frame.header.probe:
            self._route(frame, released + self.clock_offset_ns)
        elif frame.header.sent_ns and frame.header.timings:  # a rate probe (a fidelity probe has no stamp)
            upstream = frame.header.timings[-1].device
            with self._count_lock:
                self._probes[upstream] = pb.LinkProbe(
                    device=upstream, bytes=frame.nbytes, sent_ns=frame.header.sent_ns, arrived_ns=released
                )

    def _route(self, frame: TensorFrame, recv_ns: int) -> None:
        """A frame that reached this node (after link emulation): result, local stage, or error."""
        p = self._pipe
        if p is None:
            log.error("frame %d dropped: node %s not loaded", frame.header.request_id, self.device)
            self._unhold(frame)
            return
        if frame.header.epoch != p.epoch:
            log.info("frame %d of plan %d dropped: now plan %d", frame.header.request_id, frame.header.epoch, p.epoch)
            self._unhold(frame)
            return
        s = frame.header.stage
        if (s >= p.num_stages or frame.header.error) and not p.is_source:  # misrouted: home, as an error
            self._fail_frame(p, frame, f"a result for {p.source_device} arrived at {self.device}")
        elif s >= p.num_stages or frame.header.error:
            self._deliver_result(p, frame, recv_ns)
        elif s in p.stages:
            if not p.put(s, (frame, recv_ns)):  # the pipeline is being replaced
                self._unhold(frame)
        else:
            self._fail_frame(p, frame, f"stage {s} sent to {self.device}, which does not run it")

    def _ingress(self, frame: TensorFrame, out: queue.Queue[object]) -> None:
        """A driver frame on the source node: stamp stage -1 and send it to stage 0's device."""
        p = self._pipe
        now = self.now_ns()
        h = frame.header
        why = frame.invalid or ("it carries an error" if h.error else "a probe is no request" if h.probe else "")
        if why:
            self._answer(frame, out, why)
            return
        if p is None or not p.is_source:
            frame.header.error = f"node {self.device} is not loaded as the source"
            out.put(frame)
            return
        h.deliver_after_ns = h.hold_ns = 0  # set by this pipeline's links, not the driver
        h.lost = False
        del h.timings[:]
        self._pending[frame.header.request_id] = out
        self._hold(frame)
        frame.header.stage = 0
        frame.header.epoch = p.epoch
        frame.header.timings.add(
            stage=-1,
            device=self.device,
            recv_ns=now,
            bytes_out=frame.nbytes,
            send_ns=self.now_ns(),
            deserialize_ns=frame.decode_ns,
        )
        frame.decode_ns = 0
        self._send(p, p.first_device, frame)

    def _answer(self, frame: TensorFrame, out: queue.Queue[object], why: str) -> None:
        """A driver's frame refused at the source: answered at once with an error, never sent on."""
        with self._count_lock:
            self.frames_refused += 1
        log.warning("request %d refused by %s: %s", frame.header.request_id, self.device, why)
        frame.arrays.clear()
        frame.header.error = f"frame refused by {self.device}: {why}"
        out.put(frame)

    def _refuse(self, frame: TensorFrame, why: str) -> None:
        """A frame from upstream this node cannot take: counted, and sent home as an error where
        its request is known (a probe, a frame of another plan or one whose header could not be
        read is dropped)."""
        with self._count_lock:
            self.frames_refused += 1
        msg = f"frame refused by {self.device}: {why}"
        p, h = self._pipe, frame.header
        if p is None or h.probe or h.request_id == NO_REQUEST or h.epoch != p.epoch:
            log.warning("%s (request %d): dropped", msg, h.request_id)
            return
        h.error = msg
        try:
            self._fail_frame(p, frame, msg)
        except Exception:
            log.exception("frame %d: sending its error home", h.request_id)

    def _deliver_result(self, p: _Pipeline, frame: TensorFrame, recv_ns: int) -> None:
        self._unhold(frame)
        if not p.is_source:
            log.error(
                "result %d arrived at %s, not the source %s: dropped",
                frame.header.request_id,
                self.device,
                p.source_device,
            )
            return
        frame.header.timings.add(
            stage=p.num_stages, device=self.device, recv_ns=recv_ns, deserialize_ns=frame.decode_ns
        )
        frame.decode_ns = 0
        if frame.header.sequence and not frame.header.error and LOGITS in frame.arrays:
            frame.arrays = {NEXT_TOKEN: greedy_token(frame.arrays[LOGITS])}  # greedy decoding at the source
        out = self._pending.pop(frame.header.request_id, None)
        if out is None:
            log.warning("result %d has no waiting driver: dropped", frame.header.request_id)
            return
        out.put(frame)

    def _send(self, p: _Pipeline, device: str, frame: TensorFrame) -> None:
        if device == self.device:
            frame.decode_ns = 0  # no link, nothing decoded
            self._route(frame, self.now_ns())  # same device: no link
            return
        sender = p.senders.get(device)
        if sender is None:
            self._fail_frame(p, frame, f"no peer {device!r} on {self.device}")
            return
        sender.send(frame)

    def _fail_frame(self, p: _Pipeline, frame: TensorFrame, msg: str, lost: bool = False) -> None:
        """Send a frame home with error set (tensors dropped): no silent loss. `lost`: the cause
        is a peer link (the request may be sent again), not the request itself."""
        log.error("frame %d: %s", frame.header.request_id, msg)
        if lost:
            frame.header.lost = True
        if not frame.header.error:
            frame.header.error = msg
        frame.header.stage = p.num_stages
        frame.arrays.clear()
        if p.is_source:
            self._deliver_result(p, frame, self.now_ns())
        else:
            self._send(p, p.source_device, frame)

    def _on_link_failed(self, frame: TensorFrame, msg: str) -> None:
        if frame.header.probe:  # a rate probe that did not get through: nothing to send home
            return
        p = self._pipe
        if p is None:
            self._unhold(frame)
            return
        if frame.header.error and frame.header.stage >= p.num_stages and not p.is_source:
            log.error("error frame %d could not go home: %s", frame.header.request_id, msg)
            self._unhold(frame)
            return
        self._fail_frame(p, frame, msg, lost=True)

    # -- compute ---------------------------------------------------------------------------

    def _work(self, p: _Pipeline, stage: Stage) -> None:
        """One stage's compute loop: decode, run, keep the forward set, send on."""
        idx = stage.config.index
        q = p.queues[idx]
        needed = set(stage.input_names)
        forward = set(stage.config.forward) or set(stage.output_names)
        next_device = stage.config.next_device or p.source_device
        while not p.stop.is_set():
            p.resize(stage, self.limits)
            try:
                frame, recv_ns = q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            start = self.now_ns()
            seq = frame.header.sequence if stage.config.state else 0
            try:
                feeds = {k: v for k, v in frame.arrays.items() if k in needed}
                if seq:
                    feeds.update(self._cache_of(stage, frame))
                outs = stage.run(feeds)
                err = ""
            except Exception as e:
                outs, err = {}, f"stage {idx} on {self.device}: {type(e).__name__}: {e}"
            if seq and (err or frame.header.last_step):
                self.kv.drop(idx, seq)
            elif seq:
                self.kv.keep(idx, seq, {i: outs.pop(o) for i, o in stage.config.state.items()})
            end = self.now_ns()
            timing = frame.header.timings.add(
                stage=idx,
                device=self.device,
                recv_ns=recv_ns,
                start_ns=start,
                end_ns=end,
                deserialize_ns=frame.decode_ns,
            )
            frame.decode_ns = 0
            if err:
                timing.send_ns = self.now_ns()
                self._fail_frame(p, frame, err)
                continue
            try:
                arrays = {k: v for k, v in frame.arrays.items() if k in forward and k not in outs}
                arrays.update((k, v) for k, v in outs.items() if k in forward)
                if frame.header.sequence and LOGITS in arrays:  # the source chooses from the last position alone
                    arrays[LOGITS] = arrays[LOGITS][:, -1:, :]
                frame.arrays = arrays
                timing.bytes_out = frame.nbytes
                frame.header.stage = idx + 1
                timing.send_ns = self.now_ns()
                self._send(p, next_device, frame)
            except Exception as e:
                log.exception("stage %d: sending frame %d", idx, frame.header.request_id)
                self._fail_frame(p, frame, f"stage {idx} on {self.device}: {type(e).__name__}: {e}")

    def _cache_of(self, stage: Stage, frame: TensorFrame) -> dict[str, np.ndarray]:
        """The cache inputs of a sequence's step: empty for its prefill, else what its last step left.
        A step with nothing kept (its prefill ran under another plan) is an error, not a fresh start."""
        idx, seq = stage.config.index, frame.header.sequence
        if frame.header.step == 0:
            self.kv.drop(idx, seq)
            batch = next((a.shape[0] for a in frame.arrays.values() if a.ndim), 1)
            return stage.empty_cache(batch)
        kept = self.kv.take(idx, seq)
        if kept is None:
            raise LookupError(f"sequence {seq} step {frame.header.step}: no cache kept for it here")
        return kept


class NodeServer:
    """A node's gRPC server in this process (tests, the local runtime, `python -m node`)."""

    def __init__(
        self,
        device: str,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        use_cuda: bool = False,
        max_workers: int = 64,
        connect_timeout_s: float = 10.0,
        clock_offset_ns: int | None = None,
        servicer: NodeServicer | None = None,
    ) -> None:
        cap_malloc_arenas()  # before the server's threads allocate: resident memory as the stages need it
        self.device = device
        self.host = host
        self.servicer = servicer or NodeServicer(
            device, use_cuda=use_cuda, connect_timeout_s=connect_timeout_s, clock_offset_ns=clock_offset_ns
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=SERVER_OPTIONS)
        add_node_servicer(self.servicer, self.server)  # Push and Drive in the frame codec
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> NodeServer:
        self.server.start()
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        self.servicer.close()
        self.server.stop(grace_s).wait(grace_s + 1.0)
