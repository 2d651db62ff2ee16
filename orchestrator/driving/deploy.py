"""Load a plan's stages onto running nodes: each node learns its stages, its peers and links."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common import testbed_pb2 as pb
from common.cpu_quota import ort_threads, silence_limit_s
from orchestrator.config import Testbed
from orchestrator.partition.plan import Plan
from orchestrator.runtimes.base import Deployment


@dataclass
class LoadedNode:
    device: str
    threads: int
    cpu_quota: float
    providers: str
    shaping: str = ""  # tc read back by the node ("" when it shapes nothing)
    netem: bool = False


def load_requests(
    plan: Plan,
    testbed: Testbed,
    dep: Deployment,
    source: str,
    queue_depth: int = 4,
    explicit_threads: bool = True,
    epoch: int = 0,
) -> dict[str, pb.LoadRequest]:
    """One LoadRequest per device of `testbed` that has a node: its stages, and a link to every
    other such device as `testbed` says it is now (a device left out of `testbed` is not a peer)."""
    n = len(plan.stages)
    members = {d.name for d in testbed.devices}
    stage_device = [s.device for s in plan.stages]
    # a device its stage's DVFS level slows answers later: its peers wait for it as for that share
    share = {d.name: d.cpus for d in testbed.devices} | {s.device: s.level for s in plan.stages if s.level}
    reqs: dict[str, pb.LoadRequest] = {}
    for dev in testbed.devices:
        if dev.name not in dep.nodes:
            continue
        stages = []
        for s in plan.stages:
            if s.device != dev.name:
                continue
            nxt = stage_device[s.index + 1] if s.index + 1 < n else source
            state = plan.stage_state(s.index)
            stages.append(
                pb.StageSpec(
                    index=s.index,
                    model_path=dep.stage_path(dev.name, plan.dir / s.model),
                    inputs=list(s.inputs),
                    outputs=list(s.outputs),
                    forward=list(plan.forward_after(s.index)),
                    next_device=nxt,
                    memory_mode=s.memory_mode,
                    state_inputs=list(state),
                    state_outputs=list(state.values()),
                )
            )
        peers = []
        for other, h in dep.nodes.items():
            if other == dev.name or other not in members:
                continue
            link = testbed.link(dev.name, other)
            if dep.link_emulation.tc_shaped:  # the node shapes this link with tc (delay by netem or by itself)
                ip = h.peer_address.rsplit(":", 1)[0]
                peer = pb.Peer(device=other, address=h.peer_address, ip=ip, tc_rate_bps=link.rate_bps)
                peer.tc_delay_s = link.delay_s
            else:  # the node paces the rate and the receiver holds the delay
                peer = pb.Peer(device=other, address=h.peer_address, rate_bps=link.rate_bps, delay_s=link.delay_s)
            peer.dead_after_s = silence_limit_s(share[other])
            peers.append(peer)
        reqs[dev.name] = pb.LoadRequest(
            device=dev.name,
            num_stages=n,
            source_device=source,
            stages=stages,
            peers=peers,
            first_device=stage_device[0],
            threads=ort_threads(dev.cpus) if explicit_threads else 0,
            queue_depth=queue_depth,
            epoch=epoch,
        )
    return reqs


def _empty(req: pb.LoadRequest) -> pb.LoadRequest:
    """A Load with no stages and no peers for the node `req` is for: it lets go of what it held."""
    return pb.LoadRequest(
        device=req.device, num_stages=1, source_device=req.device, first_device=req.device, threads=req.threads
    )


def deploy(
    plan: Plan,
    testbed: Testbed,
    dep: Deployment,
    source: str,
    explicit_threads: bool = True,
    timeout_s: float = 120.0,
    epoch: int = 0,
) -> dict[str, LoadedNode]:
    """Send every node its LoadRequest, all at once (a re-plan's redeploy waits for the slowest
    stage to load, not for the sum); a node that refuses stops the run with its reason.

    A run's first plan (epoch 0) goes into emptied nodes: what they held before (profiling chunks,
    stage measurements) is let go first, so a device never holds two pipelines at once and its
    memory is its stage's. A re-plan keeps the old pipeline until the new one is built."""
    reqs = load_requests(plan, testbed, dep, source, explicit_threads=explicit_threads, epoch=epoch)

    def load(name: str) -> LoadedNode:
        if epoch == 0:
            dep.client(name).load(_empty(reqs[name]), timeout_s=timeout_s)
        reply = dep.client(name).load(reqs[name], timeout_s=timeout_s)
        return LoadedNode(name, reply.threads, reply.cpu_quota, reply.providers, reply.shaping, reply.netem)

    with ThreadPoolExecutor(max_workers=max(1, len(reqs))) as pool:
        return dict(zip(reqs, pool.map(load, reqs), strict=True))
