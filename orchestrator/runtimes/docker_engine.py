"""Reaching the Docker engine: a client that answers, and a testbed's containers by their labels."""

from __future__ import annotations

from orchestrator.runtimes.docker_testbed import LABEL, LABEL_TESTBED

POOL_SIZE = 64  # connections kept to the engine: one per container started, stopped or watched at once


def engine(timeout_s: float = 5.0):
    """A docker client whose engine answers, or None. Its connection pool holds as many connections
    as a 32-device testbed's parallel calls use (the SDK's default of 10 opens and drops the rest)."""
    try:
        import docker

        client = docker.from_env(timeout=max(30, int(timeout_s)), max_pool_size=POOL_SIZE)
        client.ping()
        return client
    except Exception:
        return None


def testbed_containers(client, name: str | None = None, all_: bool = True) -> list:
    """The containers of testbed `name` (of every testbed when None), stopped ones too unless `all_` is False."""
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    return client.containers.list(all=all_, filters={"label": labels})
