"""The committed gRPC code is what protos/testbed.proto generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Icommon=protos",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            "protos/testbed.proto",
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in ("testbed_pb2.py", "testbed_pb2.pyi", "testbed_pb2_grpc.py"):
        fresh = (tmp_path / "common" / name).read_text()
        committed = (ROOT / "common" / name).read_text()
        assert fresh == committed, f"common/{name} is stale: run `make protos`"
