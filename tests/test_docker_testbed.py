"""The Docker testbed on the real engine: caps, qdiscs, link and CPU fidelity, a ViT run, clean-up.

Marked `docker`: skipped, with the reason, where no engine answers. Every testbed here has its
own name and subnet, and is removed by label even when a test fails. Traffic stays between the
test's own containers on their bridge network and the host's loopback.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.config import load_devices
from orchestrator.runtimes.docker_testbed import (
    COMPOSE_WORKSPACE,
    LABEL,
    LABEL_DEVICE,
    LABEL_TESTBED,
    PYPROJECT,
    WORKSPACE_IN,
    image_tag,
    render_compose,
)
from orchestrator.runtimes.docker_testbed import testbed_spec as make_spec
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

NAME = f"pt{os.getpid() % 100000}"
SUBNET = f"10.213.{100 + os.getpid() % 100}.0/24"

DEVICES = """
devices:
  - {name: half, cpus: 0.5, memory: 512MiB, bandwidth: 10mbit, delay: 5ms}
  - {name: one, cpus: 1, memory: 768MiB, bandwidth: 50mbit, delay: 2ms}
links:
  - {from: one, to: half, bandwidth: 30mbit}
"""


def _leftovers(client, name: str) -> tuple[list, list]:
    f = {"label": [f"{LABEL}=1", f"{LABEL_TESTBED}={name}"]}
    return client.containers.list(all=True, filters=f), client.networks.list(filters=f)


@pytest.fixture(scope="module")
def testbed(docker_client, node_image, tmp_path_factory):
    from orchestrator.runtimes import docker as dk

    d = tmp_path_factory.mktemp("tb")
    (d / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    tb = load_devices(d / "devices.yaml")
    ws = d / "ws"
    spec = make_spec(tb, NAME, SUBNET, node_image, ws)
    t0 = time.perf_counter()
    try:
        handles = dk.up(docker_client, spec)
        up_s = time.perf_counter() - t0
        conts = {c.labels[LABEL_DEVICE]: c for c in dk.testbed_containers(docker_client, NAME)}
        yield {"tb": tb, "spec": spec, "handles": handles, "containers": conts, "up_s": up_s, "ws": ws}
    finally:
        dk.down(docker_client, NAME)


def test_image_tag_is_the_version_in_pyproject(tmp_path):
    tomllib = pytest.importorskip("tomllib")
    assert PYPROJECT == ROOT / "pyproject.toml"
    assert image_tag() == f"edge-testbed-node:{tomllib.loads(PYPROJECT.read_text())['project']['version']}"
    other = tmp_path / "pyproject.toml"
    other.write_text('[tool.x]\nversion = "9.9"\n\n[project]\nname = "x"\nversion = "2.3.4"\n')
    assert image_tag(other) == "edge-testbed-node:2.3.4"  # the [project] table's, not another table's
    other.write_text('[project]\nname = "x"\n\n[tool.x]\nversion = "9.9"\n')
    with pytest.raises(RuntimeError, match="has no \\[project\\] version"):
        image_tag(other)
    with pytest.raises(RuntimeError, match="cannot read the node image's version"):
        image_tag(tmp_path / "missing.toml")


def test_compose_file_matches_the_renderer():
    tb = load_devices(ROOT / "devices" / "edge4.yaml")
    want = render_compose(make_spec(tb, workspace=COMPOSE_WORKSPACE), "devices/edge4.yaml")
    have = (ROOT / "docker-compose.yml").read_text()
    assert have == want, "docker-compose.yml drifted: run `orchestrator testbed render --out docker-compose.yml`"


def test_containers_are_capped_as_configured(testbed):
    assert testbed["up_s"] < 15.0
    for dev in testbed["tb"].devices:
        c = testbed["containers"][dev.name]
        c.reload()
        hc = c.attrs["HostConfig"]
        assert hc["NanoCpus"] == round(dev.cpus * 1e9)
        assert hc["Memory"] == dev.memory
        assert hc["MemorySwap"] == dev.memory  # swap off
        assert hc["CapAdd"] == ["NET_ADMIN"] and not hc.get("Privileged")
        assert c.name == f"{NAME}-{dev.name}" and c.status == "running"
        status = c.exec_run(["cat", "/proc/1/status", "/proc/1/cmdline"]).output.decode(errors="replace")
        assert "-m\x00node" in status  # pid 1 is the node itself (the entrypoint exec'd it)
        uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid[0] == "10001", status  # user "node", not root
        cap = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(cap, 16) == 1 << 12  # NET_ADMIN and nothing else


def test_qdiscs_inside_match_the_links(testbed):
    from node.tc import parse_htb_rates

    spec, tb = testbed["spec"], testbed["tb"]
    ips = {c.device: c.ip for c in spec.containers}
    for dev in tb.devices:
        c = testbed["containers"][dev.name]
        out = c.exec_run(["tc", "-s", "class", "show", "dev", "eth0"]).output.decode()
        filt = c.exec_run(["tc", "filter", "show", "dev", "eth0"]).output.decode()
        rates = sorted(r for cid, r in parse_htb_rates(out).items() if cid != "1:1")
        want = sorted(tb.link(dev.name, o.name).rate_bps for o in tb.devices if o.name != dev.name)
        assert rates == want, out
        for o in tb.devices:
            if o.name != dev.name:  # u32 on the peer's address (tc prints it in hex)
                hexip = "".join(f"{int(x):02x}" for x in ips[o.name].split("."))
                assert hexip in filt, filt
        logs = c.logs().decode()
        assert "tc read back on eth0" in logs


@pytest.fixture(scope="module")
def clients(testbed):
    """Each node's control client: the fidelity check and the probes go through its Measure call."""
    from orchestrator.driving.client import NodeClient

    cs = {d: NodeClient(d, h.control_address) for d, h in testbed["handles"].items()}
    yield cs
    for c in cs.values():
        c.close()


def test_10mbit_link_measures_within_10_percent(testbed, clients):
    from orchestrator.runtimes.docker_fidelity import check_links

    ips = {c.device: c.ip for c in testbed["spec"].containers}
    links = check_links(clients, ips, testbed["tb"], node_holds_delay=True)
    by = {(x["from"], x["to"]): x for x in links}
    half_one = by[("half", "one")]
    assert half_one["configured_bps"] == 10_000_000
    assert abs(half_one["error"]) <= 0.10, half_one
    assert abs(by[("one", "half")]["error"]) <= 0.10, by[("one", "half")]
    for x in links:  # the delay: the network's, plus what the receiving node really held (never less than asked)
        assert x["node_hold_ms"] >= x["configured_delay_ms"], x
        summed = x["network_delay_ms"] + x["node_hold_ms"]  # each rounded to the microsecond
        assert x["achieved_delay_ms"] == pytest.approx(summed, abs=2e-3)


def _matmul_model(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(6):
        w = numpy_helper.from_array((rng.standard_normal((512, 512)) * 0.03).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    g = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 512])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [256, 512])],
        inits,
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_half_cpu_runs_a_stage_about_twice_as_slow_as_one_cpu(testbed, clients):
    model = _matmul_model(testbed["ws"] / "mm.onnx")
    os.chmod(model, 0o644)
    rounds: dict[str, list[dict]] = {"one": [], "half": []}
    period_s, window_s = 0.100, 1.5  # fifteen 100 ms CFS periods or more: the quota shows, not one burst
    # One container at a time (the caps, not the two containers, compete), interleaved over five
    # rounds and the fastest round kept per device: the host's own noise only ever adds time.
    for _ in range(5):
        for dev in ("one", "half"):
            r = clients[dev].measure("stage", [f"{WORKSPACE_IN}/mm.onnx", "--window-s", window_s])
            assert r["threads"] == 1 and r["runs"] >= 3, r
            rounds[dev].append(r)
    # Per round, the time a run took against the CPU it used: the cap shows there alone. The host
    # cannot make that smaller, only larger (a wait for a core), so the smallest of the five rounds
    # is kept; a host slower for a while (its CPU shared with other machines, say) slows a run's
    # CPU as much as its time and cancels out.
    slowdown = {dev: min(r["mean_s"] / r["cpu_s"] for r in rs) for dev, rs in rounds.items()}
    ratio = slowdown["half"] / slowdown["one"]
    one, half = (min(r["mean_s"] for r in rounds[dev]) for dev in ("one", "half"))
    print(
        f"ORT stage over 1.5 s, best of 5: 1 CPU {one * 1e3:.1f} ms a run, {slowdown['one']:.2f}x its CPU; "
        f"0.5 CPU {half * 1e3:.1f} ms, {slowdown['half']:.2f}x its CPU; ratio {ratio:.2f} (run times {half / one:.2f})"
    )
    # Half the CPU gives the stage half of each 100 ms CFS period. Over a window of W >= 1.5 s the
    # CPU time it gets is W/2 give or take what one period's edge can add or take (half a period of
    # quota either way), so the ratio W / cpu is 2 / (1 +- period / W): 1.875 to 2.143 here. (The run
    # times' ratio reads higher, 2.2-2.3 on this host: a run cut by the quota takes about a tenth
    # more CPU, its caches refilled after each throttled wait.)
    assert 2 / (1 + period_s / window_s) <= ratio <= 2 / (1 - period_s / window_s), rounds


def test_stats_collector_reads_every_container(testbed, docker_client, tmp_path):
    from orchestrator.runtimes.docker_stats import DockerStatsCollector

    conts = testbed["containers"]
    with DockerStatsCollector(docker_client, conts, {"half": 0.5, "one": 1.0}, tmp_path):
        busy = conts["half"].exec_run(
            ["python", "-c", "import time\nt=time.time()\nwhile time.time()-t<2.5: pass"], user="10001", detach=True
        )
        assert busy is not None
        time.sleep(3.5)
    for dev in conts:
        lines = [json.loads(x) for x in (tmp_path / f"{dev}.jsonl").read_text().splitlines()]
        assert len(lines) >= 2
        assert all(x["memory_limit"] == testbed["tb"].device(dev).memory for x in lines)
    half = [json.loads(x) for x in (tmp_path / "half.jsonl").read_text().splitlines()]
    assert max(x["cpu_of_cap"] or 0 for x in half) > 0.5


@pytest.fixture(scope="module")
def runtime(testbed, docker_client, node_image, tmp_path_factory):
    """The runtime protocol on the module's testbed: it finds it running and leaves it up."""
    from orchestrator.runtimes.docker import DockerRuntime

    logs = tmp_path_factory.mktemp("rtlogs")
    rt = DockerRuntime(
        testbed["tb"], logs, testbed["ws"], testbed_name=NAME, subnet=SUBNET, image=node_image, client=docker_client
    )
    with rt:
        rt.start()
        yield rt


def _class_of(cont, ip: str) -> tuple[str, int, int]:
    """The htb class shaping a container's egress to `ip`: its id, rate and bytes sent so far."""
    from node.tc import parse_htb_rates, parse_u32_flows

    classid = parse_u32_flows(cont.exec_run(["tc", "filter", "show", "dev", "eth0"]).output.decode())[ip]
    text = cont.exec_run(["tc", "-s", "class", "show", "dev", "eth0", "classid", classid]).output.decode()
    return classid, parse_htb_rates(text)[classid], int(text.split("Sent ")[1].split()[0])


def test_runtime_finds_the_running_testbed(runtime, testbed):
    from orchestrator.runtimes.base import LinkEmulation

    dep = runtime.running
    assert not runtime.owned and set(dep.nodes) == {"half", "one"}
    assert runtime.workspace == testbed["ws"].resolve()
    qdiscs = testbed["containers"]["half"].exec_run(["tc", "qdisc", "show", "dev", "eth0"]).output.decode()
    assert dep.link_emulation is (LinkEmulation.TC_NETEM if "netem" in qdiscs else LinkEmulation.TC_NODE_DELAY)
    assert dep.link_emulation.describe() in dep.notes


def test_set_link_changes_the_htb_class_in_place(runtime, testbed):
    """The class changed in place, and the check through the nodes' Measure calls reads the new
    rate and flags the link: it no longer has the rate its devices.yaml gives."""
    from orchestrator.runtimes.docker_fidelity import check_links

    half, ips = testbed["containers"]["half"], {c.device: c.ip for c in testbed["spec"].containers}
    classid, rate, sent = _class_of(half, ips["one"])
    assert rate == 10_000_000 and sent > 0  # the transfers of the tests above went through it
    change = runtime.set_link("half", "one", rate_bps=20_000_000)
    try:
        assert change.rate_bps == 20_000_000 and change.how.startswith("tc class change")
        same, now_rate, now_sent = _class_of(half, ips["one"])
        assert same == classid and now_rate == 20_000_000
        assert now_sent >= sent  # changed, not deleted and added again: its counters carry on
        holds = runtime.running.link_emulation.node_holds_delay
        links = {(x["from"], x["to"]): x for x in check_links(runtime.running, ips, testbed["tb"], holds)}
        changed = links[("half", "one")]
        assert changed["achieved_bps"] == pytest.approx(20_000_000, rel=0.10)
        assert changed["configured_bps"] == 10_000_000 and changed["flagged"] and changed["error"] > 0.8
        assert not links[("one", "half")]["flagged"], links  # the other direction kept its class
    finally:
        runtime.set_link("half", "one", rate_bps=10_000_000)
    assert _class_of(half, ips["one"])[1] == 10_000_000


def test_set_cpus_is_a_live_update_read_back_from_the_cgroup(runtime, testbed):
    half = testbed["containers"]["half"]
    try:
        assert runtime.set_cpus("half", 0.25) == pytest.approx(0.25)
        half.reload()
        assert half.attrs["HostConfig"]["NanoCpus"] == 250_000_000 and half.status == "running"
        busy = runtime.running.client("half").measure("busy", [1, 1.0])
        assert busy["cpu_s"] / busy["wall_s"] == pytest.approx(0.25, rel=0.10)
    finally:
        runtime.set_cpus("half", 0.5)
    with pytest.raises(ValueError, match="cpus must be > 0"):
        runtime.set_cpus("half", 0)


def test_set_link_delay_on_a_loaded_pipeline(runtime, testbed, tiny_vit):
    from tests.runtime_helpers import drive_some, held, load_two_stages, mean_hold_s

    plan = load_two_stages(runtime, tiny_vit, testbed["tb"], "one", testbed["ws"] / "plan")
    src, dst = plan.stages[0].device, plan.stages[1].device
    assert src != dst
    drive_some(runtime, "one", 2)
    change = runtime.set_link(src, dst, delay_s=0.030)
    assert change.delay_s == 0.030
    if not runtime.running.link_emulation.node_holds_delay:
        pytest.skip("netem holds the delay here: no node hold to read back")
    assert change.how == "the sending node's hold"
    before = held(runtime, dst, src)
    drive_some(runtime, "one", 3)
    n, asked_s, held_s = mean_hold_s(before, held(runtime, dst, src))
    assert n == 3 and asked_s == pytest.approx(0.030, abs=1e-6) and held_s >= asked_s


def test_kill_and_revive_a_container(runtime, testbed):
    from orchestrator.driving.client import NodeError

    half, ips = testbed["containers"]["half"], {c.device: c.ip for c in testbed["spec"].containers}
    old = runtime.running.nodes["half"]
    t0 = time.perf_counter()
    runtime.kill("half")
    killed_s = time.perf_counter() - t0
    half.reload()
    assert half.status == "exited"
    with pytest.raises(NodeError, match="node half at"):
        runtime.running.client("half").health(timeout_s=1.0)
    t0 = time.perf_counter()
    new = runtime.revive("half")
    revived_s = time.perf_counter() - t0
    print(f"docker kill {killed_s:.2f} s, revive until healthy {revived_s:.2f} s")
    assert new.peer_address == old.peer_address  # the same address on the testbed's network
    health = runtime.running.client("half").health()
    assert health.device == "half" and not health.loaded  # back, empty
    assert _class_of(half, ips["one"])[1] == 10_000_000  # shaped again at start, as configured
    assert runtime.running.client("half").measure("quota")["cpu_quota"] == pytest.approx(0.5)  # its cap survived
    with pytest.raises(RuntimeError, match="is running: kill it first"):
        runtime.revive("half")


def test_down_leaves_nothing(testbed, docker_client):
    from orchestrator.runtimes import docker as dk

    t0 = time.perf_counter()
    dk.down(docker_client, NAME)
    assert time.perf_counter() - t0 < 15.0
    conts, nets = _leftovers(docker_client, NAME)
    assert not conts and not nets


THREE = """
devices:
  - {name: cam, cpus: 0.5, memory: 768MiB, bandwidth: 100mbit, delay: 2ms}
  - {name: edge, cpus: 0.5, memory: 768MiB, bandwidth: 100mbit, delay: 2ms}
  - {name: hub, cpus: 0.5, memory: 768MiB, bandwidth: 100mbit, delay: 2ms}
"""


def test_vit_runs_across_three_containers(docker_client, node_image, tmp_path, tiny_vit):
    from orchestrator.run import execute

    (tmp_path / "devices.yaml").write_text(textwrap.dedent(THREE))
    job = {
        "name": "dockervit",
        "model": str(tiny_vit),
        "devices": "devices.yaml",
        "runtime": "docker",
        "stages": 3,
        "source": "cam",
        "requests": 12,
        "warmup": 2,
        "concurrency": 2,
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    name, subnet = f"{NAME}r", f"10.213.{200 + os.getpid() % 50}.0/24"
    try:
        run_dir, rep = execute(str(tmp_path / "job.yaml"), out=str(tmp_path / "run"), testbed_name=name, subnet=subnet)
    finally:
        conts, nets = _leftovers(docker_client, name)
        if conts or nets:
            from orchestrator.runtimes import docker as dk

            dk.down(docker_client, name)
        assert not conts and not nets, "the run left its testbed behind"
    assert rep["runtime"] == "docker" and rep["errors"] == 0
    assert rep["agreement"]["max_abs_diff"] <= 1e-4 and rep["agreement"]["top1"] == 1.0
    assert [s["device"] for s in rep["stages"]] == ["cam", "edge", "hub"]
    fid = rep["fidelity"]
    assert len(fid["links"]) == 6 and len(fid["cpus"]) == 3
    for dev in ("cam", "edge", "hub"):
        lines = [json.loads(x) for x in (run_dir / "stats" / f"{dev}.jsonl").read_text().splitlines()]
        assert lines and any((x["cpu_cores"] or 0) > 0 for x in lines), dev
        assert rep["devices"][dev]["peak_memory_bytes"] > 0
    assert (run_dir / "logs" / "node_cam.log").read_text()
