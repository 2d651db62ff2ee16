"""A model's analysis written to a file and read back, so that a stored model is not analysed again.

`analyse` runs two shape inferences and walks every node: most of the work of cutting a stored
model. Its results depend only on the graph, on the analysis code (graph.py, and this file's
format) and on onnx's shape inference, so the weights store keeps them beside each stored graph
under a version drawn from those: a file written by other code is not read, but made again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from dataclasses import fields
from functools import cache
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from orchestrator.partition import graph as graph_module
from orchestrator.partition.graph import ModelGraph

# ModelGraph fields that are not analysis results: given, or taken from the model when read back.
_GIVEN = {"path", "model", "sha256", "initializers"}
_TYPES = "types"  # TypeProtos, kept as one serialised GraphProto of value_infos


@cache
def analysis_version() -> str:
    """What analysis results depend on besides the model: graph.py's code, this file's, onnx's version."""
    digest = hashlib.sha256(Path(graph_module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(onnx.__version__.encode())
    return digest.hexdigest()


def write_analysis(graph: ModelGraph, file: Path) -> None:
    """Write the graph's analysis results to `file`, replaced atomically (readers see all or none)."""
    types = onnx.GraphProto()
    for name, tp in graph.types.items():
        types.value_info.add(name=name).type.CopyFrom(tp)
    facts = {f.name: getattr(graph, f.name) for f in fields(ModelGraph) if f.name not in _GIVEN | {_TYPES}}
    facts[_TYPES] = base64.b64encode(types.SerializeToString()).decode()
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}")
    try:
        tmp.write_text(json.dumps({"version": analysis_version(), "facts": facts}))
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def read_analysis(file: Path, model: onnx.ModelProto, path: Path, sha256: str) -> ModelGraph | None:
    """The model's graph from the analysis in `file`; None where there is none for this code."""
    try:
        doc = json.loads(file.read_text())
        if doc["version"] != analysis_version():
            return None
        facts = dict(doc["facts"])
        types = onnx.GraphProto.FromString(base64.b64decode(facts.pop(_TYPES)))
    except (OSError, ValueError, KeyError, TypeError, DecodeError):  # binascii.Error is a ValueError
        return None
    return ModelGraph(
        path=path,
        model=model,
        sha256=sha256,
        initializers={t.name: t for t in model.graph.initializer},
        types={vi.name: vi.type for vi in types.value_info},
        **facts,
    )
