"""The node image: it builds, imports the node's runtime, has tc, runs as non-root with NET_ADMIN.

Needs a Docker engine (skipped with the reason otherwise). Builds the image with
scripts/build_image.sh when it is missing: minutes the first time, under a second when cached.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker


def _run(client, image: str, entrypoint: list[str], cmd: list[str], **kw) -> str:
    out = client.containers.run(image, entrypoint=entrypoint, command=cmd, remove=True, stdout=True, stderr=True, **kw)
    return out.decode()


def test_runtime_imports_and_tc(docker_client, node_image):
    out = _run(
        docker_client,
        node_image,
        ["python", "-c"],
        ["import onnxruntime, grpc, numpy, common.testbed_pb2; print('ok')"],
    )
    assert out.strip() == "ok"
    assert "iproute2" in _run(docker_client, node_image, ["tc"], ["-V"])


def test_entrypoint_drops_to_user_node_keeping_only_net_admin(docker_client, node_image):
    # Through the image's own entrypoint wrapper, as `python -m node` is started.
    script = (
        "id -u; grep CapEff /proc/self/status; "
        "tc qdisc add dev eth0 root handle 1: htb default 1 && tc qdisc show dev eth0"
    )
    out = _run(docker_client, node_image, ["node-entrypoint"], ["sh", "-c", script], cap_add=["NET_ADMIN"]).splitlines()
    assert out[0] == "10001"  # user "node", not root
    assert out[1].split()[1] == f"{1 << 12:016x}"  # CAP_NET_ADMIN (bit 12) and nothing else
    assert out[2].startswith("qdisc htb 1: root")  # and tc works with it
