"""Shared fixtures: small models built once per session, free ports, repo paths."""

from __future__ import annotations

import shutil
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
