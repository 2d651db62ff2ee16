"""Shared fixtures: small models built once per session, free ports, repo paths."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A small ViT with the HuggingFace export's input and output names."""
    from orchestrator.models.vit import build_vit

    out = tmp_path_factory.mktemp("models") / "vit_tiny.onnx"
    return build_vit(out, image_size=32, patch=8, layers=4, hidden=64, heads=4, mlp=128, classes=10, seed=0)


@pytest.fixture()
def fixture_copy(tmp_path):
    """Copy a fixture model next to the test so that nothing writes into tests/fixtures."""

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copyfile(FIXTURES / name, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def docker_client():
    """The engine's client; tests that need one are skipped, with the reason, where none answers."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as e:  # no SDK, no socket, engine down: all mean "no engine answers"
        pytest.skip(f"no Docker engine answers: {e}")
    return client


@pytest.fixture(scope="session")
def node_image(docker_client) -> str:
    """Build (or refresh: all cache hits when nothing changed) the node image, offline."""
    from orchestrator.runtimes.docker_testbed import image_tag

    r = subprocess.run(
        [str(ROOT / "scripts" / "build_image.sh")], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    assert r.returncode == 0, f"scripts/build_image.sh failed:\n{r.stderr[-3000:]}"
    return image_tag()


@pytest.fixture(scope="session")
def scenario_vit(tmp_path_factory) -> Path:
    """A 4-layer ViT at 224x224 (hidden 192), built by the command line: stages heavy enough to
    flow like a real pipeline on edge4, small enough that a scenario run takes seconds."""
    import sys

    out = tmp_path_factory.mktemp("scenario_models") / "vit_4l.onnx"
    cmd = ["model", "vit", "--out", str(out), "--layers", "4", "--hidden", "192", "--heads", "3", "--mlp", "768"]
    r = subprocess.run([sys.executable, "-m", "orchestrator", *cmd], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out
